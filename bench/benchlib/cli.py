"""The command-line pieces the timing benchmarks share: options, logging, SIGTERM."""

from __future__ import annotations

import argparse
import datetime as dt
import signal
import sys
import time
from collections.abc import Callable
from types import FrameType
from typing import NamedTuple

from benchlib import RESULTS
from benchlib.host import Log
from benchlib.timing import compile_portguard


def stderr_log(prog: str) -> Log:
    """A logger printing `prog: message` lines on stderr, flushed at once."""
    def log(msg: str) -> None:
        print(f"{prog}: {msg}", file=sys.stderr, flush=True)
    return log


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, through the `finally` that stops the sandbox."""
    def on_term(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)


def add_run_counts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--runs", type=int, default=15, help="timed runs per command (default 15)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")


def check_run_counts(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--runs and --warmup in range; the report goes to RESULTS.md unless --quick."""
    if args.runs < 1 or args.warmup < 0:
        p.error("--runs must be >= 1 and --warmup >= 0")
    if args.output is None and not args.quick:
        args.output = RESULTS


class Start(NamedTuple):
    """What a timing run records as it begins, for its report's header."""

    started: dt.datetime
    t0: float  # time.monotonic()
    compiled: str  # what compile_portguard() says
    code: str  # the code measured, to compare with the code after the run


def start_measuring(code_state: Callable[[], str]) -> Start:
    """SIGTERM unwinds from now on, portguard/ is byte-compiled and the code noted."""
    unwind_on_sigterm()
    started, t0 = dt.datetime.now().astimezone(), time.monotonic()
    return Start(started, t0, compile_portguard(), code_state())
