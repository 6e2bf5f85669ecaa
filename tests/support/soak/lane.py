"""Running scenarios: the units installed once, and lanes that set up, run and clean up.

Each lane has its own templates (soak<L>@, soaku<L>@, soakx<L>@), so that no lane's
instance is another's twin. Every scenario is cleaned up by unit (kill, stop,
reset-failed) and by pid (checked against its start time).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from support.sandbox import PYTHON, REPO, Sandbox, SandboxError
from support.soak.checks import check_after_preflight
from support.soak.journal import check_journal
from support.soak.leaver import Leaver
from support.soak.model import HolderSpec, Outcome, ProcLog, Scenario, SetupError
from support.soak.oracle import expect
from support.soak.profile import write_profile
from support.soak.programs import HELPER_CODE, HOLDER_CODE
from support.soak.world import (
    CFGDIR,
    CMDCOPY,
    ENVDIR,
    EXEC,
    HOLDER,
    OTHER,
    OTHER_UNIT,
    PY3,
    SERVICE_UNIT,
    SIGDIR,
)


class Soak:
    """Everything shared by the lanes: the sandbox, the installed units, the results."""

    def __init__(self, sb: Sandbox, *, lanes: int, log: Callable[[str], None]) -> None:
        self.sb = sb
        self.lanes = lanes
        self.log = log
        self.root = f"/proc/{sb.pid}/root"
        self.lock = threading.Lock()
        self.outcomes: list[Outcome] = []

    def host(self, path: str) -> str:
        """A path inside the sandbox, as the host reaches it."""
        return self.root + path

    def install(self) -> None:
        sb = self.sb
        for path in (HOLDER, OTHER, CMDCOPY):
            sb.write_file(path, HOLDER_CODE)
        sb.run(["install", "-d", "-m", "0755", ENVDIR, CFGDIR], check=True)
        sb.run(["install", "-d", "-m", "1777", SIGDIR], check=True)
        for lane in range(self.lanes):
            for tpl, user in ((f"soak{lane}", ""), (f"soaku{lane}", "User=nobody\n")):
                sb.write_unit(f"{tpl}@.service", SERVICE_UNIT.format(
                    lane=lane, envdir=ENVDIR, repo=REPO, python=PYTHON,
                    exec=shlex.join(EXEC), user=user), reload=False)
            sb.write_unit(f"soakx{lane}@.service", OTHER_UNIT.format(
                lane=lane, envdir=ENVDIR, exec=shlex.join(EXEC)), reload=False)
        sb.systemctl("daemon-reload", check=True)
        # byte-compile portguard once, so no preflight pays for it (the venv may set
        # PYTHONDONTWRITEBYTECODE for its users; this run writes the cache)
        sb.run([PYTHON, "-m", "compileall", "-q", str(REPO / "portguard")])

    def record(self, out: Outcome) -> None:
        with self.lock:
            self.outcomes.append(out)


class Lane:
    """Runs scenarios one after another with its own templates (soak<L>@, soaku<L>@,
    soakx<L>@), so lanes never see each other's units as twins."""

    def __init__(self, soak: Soak, lane: int) -> None:
        self.soak = soak
        self.sb = soak.sb
        self.lane = lane
        self.pending: list[tuple[Outcome, dict[int, ProcLog]]] = []

    # -- names ---------------------------------------------------------------------------

    def template(self, sc: Scenario) -> str:
        return f"soak{'u' if sc.user else ''}{self.lane}"

    def subject(self, sc: Scenario) -> str:
        return f"{self.template(sc)}@s{sc.n}.service"

    def unit_of(self, sc: Scenario, h: HolderSpec) -> str | None:
        tpl, n, i = self.template(sc), sc.n, h.index
        if h.made == "twin" and h.variant != "dup":
            letter = {"instance": "t", "idle": "i", "remnant": "r"}[h.variant]
            return f"{tpl}@s{n}-{letter}{i}.service"
        if h.made == "twin":
            return f"soakx{self.lane}@s{n}-dup{i}.service"
        if h.made == "protected" and h.variant == "twin":
            return f"{tpl}@s{n}-p{i}.service"
        if h.made == "protected":
            return f"soakp-s{n}-{i}.scope"
        if h.made == "stray" and h.variant == "scope":
            return f"soaks-s{n}-{i}.scope"
        if h.made == "foreign" and h.variant.startswith("unit"):
            return f"soakx{self.lane}@s{n}-f{i}.service"
        if h.made == "remnant":
            return self.subject(sc)
        return None

    def config_text(self, sc: Scenario) -> str:
        tpl = self.template(sc)
        lines = [
            "protected:",
            f'  - "{tpl}@s{sc.n}-p*.service"',
            f'  - "soakp-s{sc.n}-*.scope"',
            "services:",
            f"  {tpl}@.service:",
            "    ports: [" + ", ".join(
                f'"{p}/udp"' if sc.proto == "udp" else f'"{p}"' for p in sc.ports) + "]",
            f"    policy: {sc.policy}",
            f"    on_foreign: {sc.on_foreign}",
            f"    timeout: {round(sc.timeout * 1000)}ms",
            f"    kill_after: {round(sc.kill_after * 1000)}ms",
            f"    signal: {sc.signal}",
            f"    reuse_address: {str(sc.reuse).lower()}",
        ]
        if sc.dups_listed or sc.cmds_listed:
            lines.append("    duplicates:")
        if sc.dups_listed:
            lines.append(f'      units: ["soakx{self.lane}@s{sc.n}-dup*.service"]')
        if sc.cmds_listed:
            lines.append('      commands: ["*/cmdcopy.py"]')
        return "\n".join(lines) + "\n"

    # -- one scenario ----------------------------------------------------------------------

    def run(self, sc: Scenario) -> Outcome:
        out = Outcome(sc, self.lane, expect(sc), subject=self.subject(sc))
        t0 = time.monotonic()
        try:
            self.setup(sc)
            self.execute(sc, out)
            logs = check_after_preflight(self, sc, out)
            self.pending.append((out, logs))
        except (SetupError, SandboxError) as exc:
            out.error = str(exc)
        except subprocess.TimeoutExpired as exc:
            out.error = f"timed out: {shlex.join(map(str, exc.cmd))}"
        finally:
            try:
                self.cleanup(sc)
            except (SetupError, SandboxError, subprocess.TimeoutExpired) as exc:
                out.error = out.error or f"cleanup: {exc}"
        out.seconds = time.monotonic() - t0
        if len(self.pending) >= 10:
            self.flush_journal()
        return out

    def env_file(self, unit: str, env: dict[str, str]) -> None:
        self.sb.write_file(f"{ENVDIR}/{unit}", "".join(f"{k}={v}\n" for k, v in env.items()))

    def holder_env(self, sc: Scenario, h: HolderSpec, tag: str) -> dict[str, str]:
        env = {"SOAK_SIGDIR": f"{SIGDIR}/s{sc.n}", "SOAK_TAG": tag,
               "SOAK_PORTS": ",".join(map(str, h.ports)), "SOAK_PROTO": sc.proto,
               "SOAK_ADDR": h.addr, "SOAK_REUSE": "0" if sc.proto == "udp" else "1",
               "SOAK_WORKERS": str(h.workers), "SOAK_IGNORE": str(int(h.stubborn))}
        if h.leave is not None:
            env["SOAK_LEAVE_FILE"] = f"{SIGDIR}/s{sc.n}/{tag}.leave"
        return env

    def setup(self, sc: Scenario) -> None:
        for h in sc.holders:
            h.unit, h.tag = self.unit_of(sc, h), f"h{h.index}"
        self.require_empty(sc)
        sigdir = self.soak.host(f"{SIGDIR}/s{sc.n}")
        os.makedirs(sigdir, exist_ok=True)
        os.chmod(sigdir, 0o1777)
        self.sb.write_file(f"{CFGDIR}/s{sc.n}.yaml", self.config_text(sc), mode=0o644)
        write_profile(self.sb, self.soak.host, self.subject(sc), sc)
        self.make_lingering(sc)
        self.make_broken(sc)
        starting = self.start_holding_units(sc)
        if sc.via_unit:  # the service's own run after its ExecStartPre=
            subject = HolderSpec(index=-1, made="subject", variant="", ports=sc.ports,
                                 addr="any", uid=sc.user)
            env = self.holder_env(sc, subject, "subject")
            env.update(SOAK_GUARD="1", SOAK_CONFIG=f"{CFGDIR}/s{sc.n}.yaml",
                       SOAK_REUSE=str(int(sc.reuse)))
            self.env_file(self.subject(sc), env)
        spawned = self.spawn_processes(sc)
        self.wait_ready(sc, [*starting, *spawned])

    def make_lingering(self, sc: Scenario) -> None:
        """TIME_WAIT sockets, first (before anything listens on the port)."""
        tws = [f"{h.addr}:{h.ports[0]}:{int(h.tw_reuse)}" for h in sc.holders
               if h.made == "lingering"]
        if tws:
            made = self.sb.run([PY3, "-I", "-S", "-c", HELPER_CODE, "tw", *tws], timeout=15)
            if made.returncode != 0:
                raise SetupError(f"TIME_WAIT: {made.stderr.strip()}")

    def make_broken(self, sc: Scenario) -> None:
        """Holders made by starting a unit and SIGKILLing its main process (KillMode=
        process): a remnant of the service itself, failed twins whose workers hold on."""
        broken = [h for h in sc.holders
                  if h.made == "remnant" or (h.made, h.variant) == ("twin", "remnant")]
        if not broken:
            return
        units = [h.unit for h in broken if h.unit]
        for h in broken:
            self.env_file(units[broken.index(h)], self.holder_env(sc, h, h.tag))
        self.start_units(units)
        self.wait_ready(sc, broken)
        self.sb.systemctl("kill", "--kill-who=main", "--signal=SIGKILL", *units, check=True)
        for h in broken:
            self.wait_gone(h, h.pids[0])
            del h.pids[0]
            h.parent = {}
        self.wait_states(units, ("failed", "inactive"))

    def start_holding_units(self, sc: Scenario) -> list[HolderSpec]:
        starting = [h for h in sc.holders if h.unit and h.unit.endswith(".service")
                    and h.made != "remnant" and (h.made, h.variant) != ("twin", "remnant")]
        for h in starting:
            assert h.unit is not None
            env = self.holder_env(sc, h, h.tag)
            if h.made == "foreign":
                env["SOAK_ARGS"] = "foreign" if h.variant == "unit-other" else ""
            self.env_file(h.unit, env)
        if starting:
            self.start_units([h.unit for h in starting if h.unit])
        return starting

    def spawn_processes(self, sc: Scenario) -> list[HolderSpec]:
        """Processes outside any service: by hand, in a scope, as another user."""
        spawned = []
        for h in sc.holders:
            if h.made == "lingering" or (h.unit and h.unit.endswith(".service")):
                continue
            argv = list(EXEC)
            if (h.made, h.variant) in (("foreign", "proc"), ("foreign", "profile-other")):
                argv[-1] = OTHER
            elif (h.made, h.variant) == ("stray", "cmdglob"):
                argv[-1] = CMDCOPY
            if h.uid:
                argv = ["setpriv", f"--reuid={h.uid}", f"--regid={h.uid}", "--clear-groups",
                        "--", *argv]
            if h.unit:  # a scope: systemd-run execs the command in it (same pid)
                argv = ["systemd-run", "--quiet", "--scope", f"--unit={h.unit}", "--", *argv]
            self.sb.spawn(argv, env=self.holder_env(sc, h, h.tag),
                          log=f"{SIGDIR}/s{sc.n}/{h.tag}.out", wait_exec=False)
            spawned.append(h)
        return spawned

    def require_empty(self, sc: Scenario) -> None:
        """The lane's templates must have no process left (a leftover would be a twin)."""
        for tpl in (f"soak{self.lane}", f"soaku{self.lane}", f"soakx{self.lane}"):
            events = self.soak.host(f"/sys/fs/cgroup/system.slice/system-{tpl}.slice/"
                                    "cgroup.events")
            with contextlib.suppress(FileNotFoundError):
                if "populated 1" in Path(events).read_text():
                    self.sb.systemctl("kill", "--signal=SIGKILL", f"{tpl}@*.service")
                    self.sb.systemctl("stop", f"{tpl}@*.service")
                    raise SetupError(f"processes left in {tpl}@ units before scenario {sc.n}")

    def start_units(self, units: Sequence[str]) -> None:
        started = self.sb.systemctl("start", *units, timeout=30)
        if started.returncode != 0:
            raise SetupError(f"systemctl start {' '.join(units)}: {started.stderr.strip()}")

    def wait_states(self, units: Sequence[str], states: Iterable[str]) -> None:
        wanted = set(states)

        def reached() -> bool:
            shown = self.sb.systemctl("show", "-P", "ActiveState", *units).stdout.split()
            return len(shown) == len(units) and set(shown) <= wanted

        try:
            self.sb.wait_for(reached, 10, f"{' '.join(units)} to be {'|'.join(wanted)}",
                             interval=0.01)
        except SandboxError as exc:
            raise SetupError(str(exc)) from None

    def wait_ready(self, sc: Scenario, holders: Sequence[HolderSpec]) -> None:
        deadline = time.monotonic() + 15
        for h in holders:
            path = self.soak.host(f"{SIGDIR}/s{sc.n}/{h.tag}.ready")
            while True:
                try:
                    text = Path(path).read_text()
                    break
                except FileNotFoundError:
                    if time.monotonic() > deadline:
                        raise SetupError(f"h{h.index} ({h.made}/{h.variant}) never became "
                                         "ready") from None
                    time.sleep(0.005)
            if text.startswith("FAIL"):
                raise SetupError(f"h{h.index} ({h.made}/{h.variant}) could not bind: {text}")
            h.pids = [int(p) for p in text.split()]
            h.parent = {w: h.pids[0] for w in h.pids[1:]}
            for pid in h.pids:
                h.starts[pid] = self.start_time(pid) or 0

    def start_time(self, pid: int) -> int | None:
        """Start time of an inside pid (None: gone or a zombie)."""
        try:
            raw = Path(self.soak.host(f"/proc/{pid}/stat")).read_text()
        except (FileNotFoundError, ProcessLookupError):
            return None
        fields = raw.rpartition(")")[2].split()
        if fields[0] in ("Z", "X"):
            return None
        return int(fields[19])

    def alive(self, h: HolderSpec, pid: int) -> bool:
        started = self.start_time(pid)
        return started is not None and started == h.starts.get(pid)

    def wait_gone(self, h: HolderSpec, pid: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while self.alive(h, pid):
            if time.monotonic() > deadline:
                raise SetupError(f"pid {pid} of h{h.index} did not die")
            time.sleep(0.005)

    def execute(self, sc: Scenario, out: Outcome) -> None:
        leaver = Leaver(self, sc, out.subject)
        t0 = time.monotonic()
        leaver.start()
        limit = sc.timeout + 30
        try:
            self.launch(sc, out, limit)
        except subprocess.TimeoutExpired:
            out.exit = None
            out.violations.append(f"preflight did not return within {limit:.0f} s "
                                  f"(timeout {sc.timeout:.2f} s): a wait without a bound")
        finally:
            leaver.finish()  # whoever has not left by now stays for the checks
        out.run_seconds = time.monotonic() - t0

    def launch(self, sc: Scenario, out: Outcome, limit: float) -> None:
        if sc.via_unit:
            started = self.sb.systemctl("start", out.subject, timeout=limit)
            out.stderr = started.stderr
            shown = self.sb.systemctl("show", "-P", "ExecStartPre", out.subject).stdout
            m = re.search(r"code=(\w+) ; status=(\d+)", shown)
            if not m:
                raise SetupError(f"no ExecStartPre status in {shown!r}")
            out.exit = int(m.group(2)) if m.group(1) == "exited" else -int(m.group(2))
        else:
            args = ["--config", f"{CFGDIR}/s{sc.n}.yaml", "preflight", out.subject]
            done = self.sb.portguard(*args, *(["--dry-run"] if sc.dry_run else []),
                                     timeout=limit)
            out.exit, out.stderr = done.returncode, done.stderr


    def flush_journal(self) -> None:
        """Check the journal of the scenarios run since the last flush, in one query."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        self.sb.run(["journalctl", "--sync"], timeout=30)
        records = self.sb.journal("SYSLOG_IDENTIFIER=portguard",
                                  *[f"PORTGUARD_UNIT={o.subject}" for o, _ in pending])
        by_unit: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
        for r in records:
            by_unit[str(r.get("PORTGUARD_UNIT"))].append(r)
        for out, logs in pending:
            out.violations += check_journal(out, by_unit[out.subject], logs)
            out.journal_checked = True

    # -- cleanup -----------------------------------------------------------------------------

    def cleanup(self, sc: Scenario) -> None:
        sb = self.sb
        units = sorted({self.subject(sc), *(h.unit for h in sc.holders if h.unit)})
        sb.run(["/bin/sh", "-c", "systemctl kill --signal=SIGKILL -- \"$@\" 2>/dev/null; "
                "systemctl stop -- \"$@\" 2>/dev/null; "
                "systemctl reset-failed -- \"$@\" 2>/dev/null; true", "sh", *units],
               timeout=60)
        doomed = [(h, pid) for h in sc.holders for pid in h.pids if self.alive(h, pid)]
        if doomed:  # by pid, each checked against the start time it had when it began
            sb.run(["kill", "-KILL", *(str(pid) for _, pid in doomed)])
        for h, pid in doomed:
            self.wait_gone(h, pid)
