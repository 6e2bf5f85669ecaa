"""The command line: parses argv, runs one command, and is the only place that exits.

`main(argv)` returns the exit status instead of exiting, so tests run it in-process.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from portguard import __version__, config
from portguard.errors import ConfigError, ExitStatus, PortguardError, UsageError


@dataclass
class Output:
    """Where a command writes: stdout for results, stderr for diagnostics."""

    out: TextIO
    err: TextIO
    json: bool = False
    verbosity: int = 0  # -1 quiet, 0 normal, 1+ verbose

    def result(self, text: str) -> None:
        print(text, file=self.out)

    def document(self, doc: dict[str, Any]) -> None:
        json.dump(doc, self.out, indent=2, sort_keys=False)
        self.out.write("\n")

    def error(self, text: str) -> None:
        print(text, file=self.err)


Handler = Callable[[argparse.Namespace, Output], ExitStatus]


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() stays the only exit point."""

    def error(self, message: str) -> Any:  # argparse calls this on bad usage
        raise UsageError(f"{self.prog}: {message}\nTry '{self.prog} --help'.")

    def exit(self, status: int = 0, message: str | None = None) -> Any:
        if message:
            sys.stderr.write(message)
        raise _HelpExit(status)


class _HelpExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def config_path(args: argparse.Namespace) -> Path:
    return Path(args.config) if args.config else config.default_path()


def cmd_check_config(args: argparse.Namespace, out: Output) -> ExitStatus:
    path = config_path(args)
    try:
        cfg = config.load(path)
    except ConfigError as exc:
        if out.json:
            out.document({"ok": False, "path": str(path), "errors": exc.problems})
        else:
            for problem in exc.problems:
                out.error(problem)
            out.error(f"FAILED: {path}: {len(exc.problems)} error(s)")
        return exc.exit_status
    if out.json:
        out.document({"ok": True, "path": str(path), "services": len(cfg.services)})
    else:
        out.result(f"OK: {path}")
    return ExitStatus.OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="portguard",
        description="Keep systemd services from failing with 'bind: Address already in use'.",
    )
    parser.add_argument("--version", action="version", version=f"portguard {__version__}")
    parser.add_argument(
        "--config", metavar="PATH",
        help="config file (default: $PORTGUARD_CONFIG, then /etc/portguard/config.yaml)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-v", "--verbose", action="count", default=0, help="say more")
    noise.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    check = commands.add_parser(
        "check-config", help="validate the config file, like nginx -t",
        description="Validate the config; print OK: PATH or every error as FILE:LINE: message.",
    )
    check.set_defaults(handler=cmd_check_config)
    return parser


def main(argv: Sequence[str] | None = None, *, stdout: TextIO | None = None,
         stderr: TextIO | None = None) -> int:
    """Run one command and return its exit status; the one place errors become statuses."""
    out_stream = stdout if stdout is not None else sys.stdout
    err_stream = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except _HelpExit as done:
        return done.status
    except UsageError as exc:
        print(exc.message, file=err_stream)
        return int(exc.exit_status)
    out = Output(out_stream, err_stream, json=args.json,
                 verbosity=-1 if args.quiet else args.verbose)
    handler: Handler = args.handler
    try:
        return int(handler(args, out))
    except PortguardError as exc:
        if out.json:
            out.document({"error": exc.message, "exit_status": int(exc.exit_status)})
        else:
            print(f"portguard: {exc.message}", file=err_stream)
        return int(exc.exit_status)
    except KeyboardInterrupt:
        print("portguard: interrupted", file=err_stream)
        return 130


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
