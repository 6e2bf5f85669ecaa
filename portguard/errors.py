"""The exit-code table and the exceptions that carry their own exit code.

Only `portguard.cli` turns these into a process status; everything else raises.
"""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Process exit codes: as docs/commands.md promises them (sysexits where one fits)."""

    OK = 0  # ports clear
    BLOCKED = 1  # foreign holder, policy `fail`, a stop that failed
    USAGE = 2  # bad command line
    NO_BIND_FAILURE = 3  # `why` only: the journal shows no bind failure
    NO_PORT_FOUND = 4  # `why` only: a bind failure whose port nothing names
    TIMEOUT = 75  # EX_TEMPFAIL: timed out waiting
    NOT_PERMITTED = 77  # EX_NOPERM: needs root / polkit
    BAD_CONFIG = 78  # EX_CONFIG


class PortguardError(Exception):
    """An expected failure: shown as a message, never as a traceback."""

    exit_status: ExitStatus = ExitStatus.BLOCKED

    def __init__(self, message: str, *, exit_status: ExitStatus | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_status is not None:
            self.exit_status = exit_status

    def __str__(self) -> str:
        return self.message


class UsageError(PortguardError):
    exit_status = ExitStatus.USAGE


class BlockedError(PortguardError):
    exit_status = ExitStatus.BLOCKED


class TimedOutError(PortguardError):
    exit_status = ExitStatus.TIMEOUT


class NotPermittedError(PortguardError):
    exit_status = ExitStatus.NOT_PERMITTED


class ConfigError(PortguardError):
    """One or more problems in a config file, each already `FILE:LINE[:COL]: message`."""

    exit_status = ExitStatus.BAD_CONFIG

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)
