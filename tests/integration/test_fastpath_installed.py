"""The fast path as `install` writes it: every form of the drop-in, started by systemd.

A guarded start on free ports runs the drop-in's `ExecStartPre=` on every start of the
unit, so what it imports is paid every time. `portguard install` writes one of eight forms:
the console script or `python -P -m portguard` (install run as `python -m portguard`),
the default config or `--config PATH` (a config elsewhere), with `NotifyAccess=exec` or
without it (the unit already says `NotifyAccess=all`). Each form is installed here by
`portguard install` itself, the unit is started with `systemctl start`, and Python's own
import log of that ExecStartPre= (`PYTHONPROFILEIMPORTTIME=1`, its stderr sent to a file
by a test drop-in) must show:
- the fast path was taken (the unit started, one "all declared ports are free" line);
- portguard's modules are among FAST_PATH (`--config PATH` needs no `app`);
- none of FORBIDDEN was imported (each costs a guarded start milliseconds it does not
  need: bench/RESULTS.md, "Guarded start as installed", has the figures).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support.preflight_scene import modules
from support.sandbox import PYTHON, REPO, Sandbox

# portguard's modules on a guarded start on free ports: the fast path, named once.
FAST_PATH = frozenset({
    "portguard", "portguard.cli", "portguard.app",
    "portguard.commands", "portguard.commands.preflight_fast",
    "portguard.commands.preflight_stop",
    "portguard.config", "portguard.config.compiled", "portguard.config.trust",
    "portguard.config.unitnames", "portguard.text",
    "portguard.observe", "portguard.observe.kernel", "portguard.observe.kernel.bindable",
    "portguard.observe.procs", "portguard.observe.procs.cgroupfs",
    "portguard.observe.containers", "portguard.observe.containers.hints",
    "portguard.report", "portguard.report.native",
})
# What a guarded start must not import: the slow path's dependencies, the daemon's
# notifier (sdnotify and threading), the value types and event enums (enum with the
# functools and collections it imports: ~4 ms), and stdlib modules it does without.
FORBIDDEN = frozenset({
    "yaml", "pystemd", "psutil", "sdnotify", "argparse", "threading", "socket",
    "re", "typing", "json", "subprocess", "enum", "collections", "contextlib",
    "portguard.report.notify", "portguard.report.journal", "portguard.errors",
    "portguard.model", "portguard.config.schema", "portguard.observe.kernel.sockets",
})

# What `python -m` itself imports before portguard runs (runpy: importlib.util, and its
# contextlib and collections): the `python -P -m portguard` form pays them, not portguard.
RUNPY = frozenset({"contextlib", "collections"})

CONFIG = "/etc/portguard/config.yaml"
OTHER_CONFIG = "/etc/portguard/elsewhere.yaml"
LOG = "/run/portguard-test-imports-{unit}.log"


@dataclass(frozen=True)
class Form:
    config: str  # the config install was pointed at
    notify_access: bool  # the drop-in says NotifyAccess=exec
    script: bool  # install ran as the console script (its drop-in names it), else as
    # `python -m portguard` (its drop-in: `python -P -m portguard`)

    @property
    def name(self) -> str:
        return (f"{'script' if self.script else 'm'}-"
                f"{'default' if self.config == CONFIG else 'config'}-"
                f"{'notifyexec' if self.notify_access else 'nonotify'}")


FORMS = [Form(c, n, s) for s in (True, False) for c in (CONFIG, OTHER_CONFIG)
         for n in (True, False)]


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[dict[str, str]]:
    """One unit per form, each with the drop-in `portguard install` wrote for it; the unit
    for each form by its name."""
    units = {f.name: f"fast-{f.name}.service" for f in FORMS}
    port = 9200
    text = "services:\n" + "".join(f"  {u}:\n    ports: [\"{port + i}\"]\n"
                                   for i, u in enumerate(units.values()))
    for path in (CONFIG, OTHER_CONFIG):
        sandbox.write_file(path, text)
        checked = sandbox.portguard("--config", path, "check-config")  # compiles it
        assert checked.returncode == 0, checked.stdout + checked.stderr
    for form in FORMS:
        unit = units[form.name]
        notify = "" if form.notify_access else "NotifyAccess=all\n"
        sandbox.write_unit(unit, f"[Service]\nType=oneshot\nRemainAfterExit=yes\n{notify}"
                                 "ExecStart=/bin/true\n", reload=False)
        sandbox.write_file(f"/etc/systemd/system/{unit}.d/zz-imports.conf",
                           "[Service]\nEnvironment=PYTHONPROFILEIMPORTTIME=1\n"
                           f"StandardError=append:{LOG.format(unit=unit)}\n")
    sandbox.systemctl("daemon-reload", check=True)
    for form in FORMS:
        config = [] if form.config == CONFIG else ["--config", form.config]
        command = ([str(REPO / ".venv/bin/portguard")] if form.script
                   else [PYTHON, "-m", "portguard"])
        done = sandbox.run([*command, *config, "install", units[form.name]], timeout=60)
        assert done.returncode == 0, done.stderr
    yield units
    for unit in units.values():
        sandbox.systemctl("stop", unit)


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.name)
def test_each_installed_form_starts_on_the_fast_path(sandbox: Sandbox,
                                                     installed: dict[str, str],
                                                     form: Form) -> None:
    unit = installed[form.name]
    dropin = sandbox.read_file(f"/etc/systemd/system/{unit}.d/portguard.conf")
    assert ("NotifyAccess=exec" in dropin) == form.notify_access, dropin
    assert (f"--config {form.config} preflight %n" in dropin) == (form.config != CONFIG)
    assert ("-P -m portguard " in dropin) != form.script, dropin
    sandbox.systemctl("stop", unit)
    sandbox.run(["rm", "-f", LOG.format(unit=unit)], check=True)
    started = sandbox.systemctl("start", unit)
    assert started.returncode == 0, started.stderr
    log = sandbox.read_file(LOG.format(unit=unit))
    assert f"portguard: {unit}: all declared ports are free (" in log, log[-2000:]
    loaded = modules(log)
    ours = {m for m in loaded if m == "portguard" or m.startswith("portguard.")}
    assert "portguard.commands.preflight_fast" in ours, sorted(ours)
    assert ours <= FAST_PATH, sorted(ours - FAST_PATH)
    forbidden = FORBIDDEN if form.script else FORBIDDEN - RUNPY
    assert not loaded & forbidden, sorted(loaded & forbidden)
