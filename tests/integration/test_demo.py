"""`make demo` (scripts/demo.py), end to end, as a user sees it.

As root: the story in its own real-systemd sandbox. Each scene's heading, the journal rows
that show each kind of holder being dealt with (self, twin, stray, foreign, lingering), the
refusal as the administrator reads it, the summary, exit 0, no colour on a pipe, nothing
left behind on the host, and the promise of the README ("readable in under a minute"):
the demo finishes well within it (bounded here at 90 s, to stay clear of a busy CI host).

Without root: it says what it needs (root, unshare) and shows check-config and `status`
with the example config on the live host instead, exit 0. Run as `nobody` with Debian's
/usr/bin/python3, from a world-readable copy of the files the demo needs (the venv's
interpreter sits under /root, 0700, and the repository may too).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.availability import require_sandbox, skip_or_fail
from support.sandbox import BASE_ENV, PYTHON, REPO, _cgroup_hierarchies

DEMO = REPO / "scripts" / "demo.py"
PROMISED_SECONDS = 60  # README / issue 6: "readable in under a minute"
BOUND_SECONDS = 90  # the test's bound: the promise, with room for a loaded CI host
DEBIAN_PYTHON = "/usr/bin/python3"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]

HEADINGS = [
    "1/6  A remnant of web@blue's previous run holds 8080  [self]",
    "2/6  Blue/green: web@green starts while web@blue holds 8080  [twin]",
    "3/6  A copy of webd left running by hand holds 8080  [stray]",
    "4/6  Another program holds metrics-gateway's port 9091  [foreign]",
    "5/6  TIME_WAIT after a fast restart  [lingering]",
    "6/6  After the fact: a unit that failed to bind, explained  [why]",
]
# journal table rows: EVENT  PORT  KIND  ACTION  RESULT ...
JOURNAL_ROWS = {
    "self": r"process signalled +8080/tcp +self +signal +exited +\d+ +web@blue\.service",
    "twin": r"twin unit stopped +8080/tcp +twin +stop +done +\d+ +web@blue\.service",
    "stray": r"process signalled +8080/tcp +stray +signal +exited +\d+",
    "foreign": r"refused +9091/tcp +foreign +refuse +blocked +\d+ "
               r"+prometheus-pushgateway\.service",
    "lingering": r"waiting for the port +9100/tcp +lingering +wait +waiting",
}


RUNTIME_PACKAGES = ("yaml", "pystemd", "lxml", "psutil", "sdnotify")


def leftovers(pid: int) -> list[str]:
    """Sandbox staging dirs and cgroups named after `pid` (sandbox.py names them
    portguard-sandbox-<creating pid>-...), anywhere the sandbox puts them."""
    pattern = f"portguard-sandbox-{pid}-*"
    found = [str(p) for p in Path(tempfile.gettempdir()).glob(pattern)]
    for mount, own in _cgroup_hierarchies():  # the demo ran in this process's cgroups
        found += [str(p) for p in Path(mount + own.rstrip("/")).glob(pattern)]
    return found


# -- as root: the story in the sandbox ---------------------------------------------------


@pytest.fixture(scope="module")
def story() -> tuple[subprocess.CompletedProcess[str], float, int]:
    """One run of the demo for the module: (result, seconds, its pid)."""
    require_sandbox()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLUMNS")}
    t0 = time.monotonic()
    with subprocess.Popen([PYTHON, str(DEMO)], cwd=REPO, env=env, text=True,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        try:
            stdout, stderr = proc.communicate(timeout=BOUND_SECONDS * 2)
        except subprocess.TimeoutExpired:
            proc.kill()  # its sandbox dies with it (pdeathsig)
            stdout, stderr = proc.communicate()
            pytest.fail(f"the demo ran over {BOUND_SECONDS * 2} s:\n{stdout}{stderr}")
    took = time.monotonic() - t0
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return result, took, proc.pid


def test_the_demo_tells_every_scene_and_exits_0(
        story: tuple[subprocess.CompletedProcess[str], float, int]) -> None:
    done, _, _ = story
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert done.stderr == ""
    assert "OK: /etc/portguard/config.yaml" in out  # the example, validated, unchanged
    for unit in ("web@.service", "api.service", "metrics-gateway.service"):
        assert f"installed: /etc/systemd/system/{unit}.d/portguard.conf" in out
    positions = [out.index(h) for h in HEADINGS]  # every heading, in order
    assert positions == sorted(positions)
    for kind, row in JOURNAL_ROWS.items():
        assert re.search(row, out), f"no journal row for {kind}: {row}\n{out}"
    assert out.count("outcome: ✓") == len(HEADINGS)
    assert "✗" not in out
    assert "All 6 scenes behaved as expected" in out
    assert "\x1b[" not in out  # stdout is a pipe: no colour


def test_each_scene_shows_who_held_the_port_and_why(
        story: tuple[subprocess.CompletedProcess[str], float, int]) -> None:
    out = story[0].stdout
    scenes = [out[out.index(h):] for h in HEADINGS]
    for i, h in enumerate(HEADINGS[:-1]):  # the five guarded scenes (why's is last)
        scenes[i] = scenes[i][:scenes[i].index(HEADINGS[i + 1])]
        assert "$ portguard who" in scenes[i], h
        assert "decided:" in scenes[i], h
    assert re.search(r"8080/tcp +LISTEN +0\.0\.0\.0:8080 +\d+ +root +web@blue\.service",
                     scenes[0])
    assert re.search(r"8080/tcp +LISTEN +0\.0\.0\.0:8080 +\d+ +root +- ", scenes[2])
    # the rest is prose, wrapped to the terminal: compare it with whitespace folded
    remnant, twin, stray, foreign, lingering, why = (" ".join(s.split()) for s in scenes)
    assert "[self: left over from the unit's previous run" in remnant
    assert "in web@blue.service [twin: another instance of web@.service" in twin
    assert "web@blue.service inactive" in twin
    assert "[stray: a copy of web@.service's program started outside any unit]" in stray
    # the refusal as the administrator reads it, exit status 1, and on_foreign explained
    assert "portguard: metrics-gateway.service cannot start: 9091/tcp is held by" in foreign
    assert "systemctl stop prometheus-pushgateway.service" in foreign
    assert "status=1/FAILURE" in foreign
    assert "on_foreign: fail" in foreign and "on_foreign: wait" in foreign
    assert "metrics-gateway.service failed" in foreign
    assert "prometheus-pushgateway.service untouched" in foreign
    assert "TIME_WAIT" in lingering and "reuse_address: false" in lingering
    assert "activating (start-pre)" in lingering
    # why, after a real bind failure: the program's words, the holder, the fix, then free
    assert "$ portguard why metrics-gateway.service" in why
    assert "bind: Address already in use" in why
    assert re.search(r"9091/tcp +0\.0\.0\.0 +message +held +\d+ +root "
                     r"+prometheus-pushgateway\.service +foreign", why)
    assert "$ systemctl stop prometheus-pushgateway.service" in why
    assert "the port is free now: `systemctl restart metrics-gateway.service`" in why


def test_the_demo_finishes_within_its_promise_and_leaves_nothing_behind(
        story: tuple[subprocess.CompletedProcess[str], float, int]) -> None:
    done, took, pid = story
    assert took < BOUND_SECONDS, f"the demo took {took:.1f} s (promised < {PROMISED_SECONDS})"
    said = re.search(r"behaved as expected in ([\d.]+) s", done.stdout)
    assert said and float(said.group(1)) < PROMISED_SECONDS, done.stdout[-400:]
    assert leftovers(pid) == []


# -- without root: what it needs, and `status` on this host --------------------------------


@pytest.fixture
def readable_copy() -> Iterator[Path]:
    """The files the demo's non-root branch uses, where `nobody` can read them."""
    root = Path(tempfile.mkdtemp(prefix="portguard-demo-test-"))
    try:
        root.chmod(0o755)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / "portguard", root / "portguard", ignore=ignore)
        (root / "scripts").mkdir()
        for script in DEMO.parent.glob("demo*.py"):  # demo.py and the modules it imports
            shutil.copy(script, root / "scripts" / script.name)
        shutil.copy(REPO / "config.example.yaml", root / "config.example.yaml")
        shutil.copytree(REPO / "tests" / "support", root / "tests" / "support", ignore=ignore)
        # portguard's dependencies too: a clean clone's .venv may sit under a directory
        # nobody cannot enter (mktemp -d is 0700)
        for name in RUNTIME_PACKAGES:
            spec = importlib.util.find_spec(name)
            assert spec is not None and spec.origin, name
            origin = Path(spec.origin)
            if origin.name == "__init__.py":
                shutil.copytree(origin.parent, root / "site" / name, ignore=ignore)
            else:
                (root / "site").mkdir(exist_ok=True)
                shutil.copy(origin, root / "site" / origin.name)
        for path in root.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_without_root_it_says_what_it_needs_and_shows_status(readable_copy: Path) -> None:
    env = {**BASE_ENV, "PYTHONPATH": f"{readable_copy}:{readable_copy / 'site'}"}
    if os.geteuid() == 0:
        if not os.access(DEBIAN_PYTHON, os.X_OK) or shutil.which("setpriv") is None:
            skip_or_fail(f"needs {DEBIAN_PYTHON} and setpriv to run as nobody")
        argv = [*NOBODY, DEBIAN_PYTHON]
        probe = subprocess.run([*argv, "-c", f"import {', '.join(RUNTIME_PACKAGES)}, "
                                "portguard.config.schema"],
                               env=env, cwd="/", capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            skip_or_fail(f"nobody cannot import portguard's dependencies: {probe.stderr}")
    else:
        argv = [PYTHON]
    t0 = time.monotonic()
    done = subprocess.run([*argv, str(readable_copy / "scripts" / "demo.py")], env=env,
                          cwd="/", capture_output=True, text=True, check=False, timeout=60)
    took = time.monotonic() - t0
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert done.stderr == ""
    # what it needs, and why it is not here
    assert "✗ root" in out
    assert "unshare" in out
    assert re.search(r"running as \S+ \(uid \d+\), not root", out)
    assert "sudo make demo" in out
    # instead: the example config on the live host, read-only
    assert "$ portguard --config config.example.yaml check-config" in out
    assert "OK: config.example.yaml" in out
    assert "$ portguard --config config.example.yaml status" in out
    for header in ("web@.service  (policy stop, on_foreign fail)",
                   "api.service  (policy wait, on_foreign wait)",
                   "metrics-gateway.service  (policy fail, on_foreign fail)"):
        assert header in out
    assert "port 8080:" in out and "port 9100:" in out
    assert "Setting the scene" not in out  # no sandbox was attempted
    assert took < 30
