"""Facts about the machine and the code measured, and waiting for a quiet machine.

Every report names the machine, the date and the portguard code it measured, so that
figures from different runs are compared knowingly; the code state is taken before a
run and again after, to flag an edit made while it ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from support.sandbox import PYTHON

from benchlib import REPO

Log = Callable[[str], None]


# --- the machine --------------------------------------------------------------------------

def cpu_model() -> str:
    """The first `model name` of /proc/cpuinfo ("" when unreadable)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return ""


def memory() -> str:
    """MemTotal in GiB, e.g. "7.8 GiB" ("" when unreadable)."""
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        return f"{kb / 1024 / 1024:.1f} GiB"
    return ""


def tool_versions(argvs: Iterable[list[str]]) -> dict[str, str]:
    """The version line each tool prints (ss -V, lsof -v, ...), by tool name."""
    tools = {}
    for argv in argvs:
        with contextlib.suppress(OSError):
            p = subprocess.run(argv, capture_output=True, text=True, check=False)
            text = (p.stdout + p.stderr).strip().splitlines()
            ver = next((ln.strip() for ln in text if re.search(r"\d+\.\d+|systemd \d+", ln)),
                       "")
            tools[argv[0]] = ver
    return tools


def machine() -> dict[str, str]:
    """Kernel, CPUs, memory, both interpreters and the compared tools' versions."""
    tools = tool_versions((["ss", "-V"], ["lsof", "-v"], ["fuser", "-V"],
                           ["systemctl", "--version"]))
    py = subprocess.run(["/usr/bin/python3", "-V"], capture_output=True, text=True,
                        check=False).stdout.strip()
    return {"kernel": platform.release(), "nproc": str(os.cpu_count()), "cpu": cpu_model(),
            "memory": memory(), "python3": f"/usr/bin/python3 ({py})",
            "venv python": f"{PYTHON} ({platform.python_version()}, {sys.executable})",
            **{f"tool {k}": v for k, v in tools.items()}}


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --- a quiet machine ----------------------------------------------------------------------

def cpu_jiffies() -> tuple[int, int]:
    """(total, idle + iowait) jiffies of all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all CPUs' time spent busy over `interval` seconds."""
    total0, idle0 = cpu_jiffies()
    time.sleep(interval)
    total1, idle1 = cpu_jiffies()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(max_wait: float, log: Log, what: str, threshold: float = 0.15) -> float:
    """Wait (bounded) until the CPUs are mostly idle; returns the last busy fraction.

    Other work on the machine (a test run, a build) inflates every timing, ss's and
    portguard's alike but not in proportion; the fraction is recorded in the report.
    """
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    said = False
    while busy > threshold and time.monotonic() < deadline:
        if not said:
            log(f"{what}: CPUs {busy:.0%} busy with other work; waiting up to "
                f"{max_wait:.0f} s for them to settle below {threshold:.0%}")
            said = True
        busy = cpu_busy()
    return busy


# --- the code measured --------------------------------------------------------------------

def git_state() -> tuple[str, int]:
    """(short HEAD or "", how many files in portguard/ differ from it)."""
    head = dirty = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--",
                                "portguard"], capture_output=True, text=True,
                               check=True).stdout
    return head, len(dirty.splitlines())


def loaded_modules(imports: Iterable[str]) -> list[Path]:
    """The files of every portguard module that importing `imports` loads."""
    probe = ("import sys, importlib; [importlib.import_module(m) for m in sys.argv[1:]]; "
             "print('\\n'.join(sorted(m.__file__ for n, m in sys.modules.items() "
             "if n.startswith('portguard') and getattr(m, '__file__', None))))")
    out = subprocess.run([PYTHON, "-c", probe, *imports], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return [Path(name) for name in out.split()]


def all_modules() -> list[Path]:
    return sorted((REPO / "portguard").glob("*.py"))


def code_state(files: Iterable[Path], what: str, *, names_hashed: bool = True) -> str:
    """"commit C[ + N uncommitted file(s) in portguard/]; sha256 of WHAT HASH": which
    portguard was measured. The hash covers `files` only (modules the measured path does
    not load may change without changing what is timed). `names_hashed=False` hashes the
    contents alone, as the soak always has, so its recorded hashes stay comparable."""
    digest = hashlib.sha256()
    for path in files:
        digest.update((path.name.encode() + b"\0" if names_hashed else b"")
                      + path.read_bytes())
    head, changed = git_state()
    return (f"commit {head or '?'}" + (f" + {changed} uncommitted file(s) in portguard/"
                                       if changed else "")
            + f"; sha256 of {what} {digest.hexdigest()[:12]}")


def same_code(before: str, after: str) -> bool:
    """Whether two code_state() lines hash the same code (the commit may differ)."""
    return before.rpartition(" ")[2] == after.rpartition(" ")[2]
