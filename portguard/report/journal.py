"""Structured journal records: one per decision, with the fields of docs/journal.md.

`Event` gives each kind of decision its fixed MESSAGE_ID and priority; `Journal` builds
the record and sends it through `report.native` (the journal's native protocol, else
stderr).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from portguard.records import NamedTuple
from portguard.report import native
from portguard.text import shown_lines

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

    from portguard.model import Container


class Priority(enum.IntEnum):
    """syslog priorities, as the journal's PRIORITY= field wants them (not logging levels)."""

    EMERG = 0
    ALERT = 1
    CRIT = 2
    ERR = 3
    WARNING = 4
    NOTICE = 5
    INFO = 6
    DEBUG = 7


class Event(enum.Enum):
    """Each event type with its fixed MESSAGE_ID and default priority.

    The ids are part of the contract (README lists them): never change one.
    """

    PORTS_CLEAR = native.PORTS_CLEAR
    UNIT_NOT_CONFIGURED = ("55b39072bbbf4ee39245c02d398d6a82", Priority.NOTICE)
    CONFLICT = ("d74d81e4b74f43ecb06f332d7e10fca9", Priority.WARNING)
    STOP_UNIT = ("32df9301fc754f1285c3344dda6a731d", Priority.NOTICE)
    SIGNAL = ("b7876e4d57b34eef99981e9da9de1233", Priority.NOTICE)
    KILL = ("744a196b2567446ba506391298360d15", Priority.WARNING)
    WAIT = ("da25c984d0a14814a1be47f9d2384f7a", Priority.INFO)
    REFUSED = ("1dd1d9a38bb34678aad2e121395fc7f2", Priority.ERR)
    WARNED = ("7d4a70ad50f6452aa1ac4ef6c64c0ad0", Priority.WARNING)
    TIMED_OUT = ("ca5a8ba6bfa04e42a616be49bb49746b", Priority.ERR)
    IDENTITY_CHANGED = ("8ad43760f38648719a0731aee8185aca", Priority.WARNING)
    CONFIG_ERROR = ("9619d2ce1faf4c26b65cf1b21f2153f4", Priority.ERR)
    # `portguard daemon`
    DAEMON_STARTED = ("50df78044c0e45c0a806b058db7cdbba", Priority.INFO)
    DAEMON_RELOADED = ("36f10409e50641afa9fcb493fa7f1bc9", Priority.INFO)
    DAEMON_RELOAD_FAILED = ("190d1cd15f6641c7b8935e3545c49f7f", Priority.ERR)
    DAEMON_RESOLVED = ("6550dfb63bd24c669011ebfc5fa96e9a", Priority.NOTICE)
    DAEMON_RESTARTED = ("079ab1f707a54b2f94a198fa543f532a", Priority.NOTICE)
    DAEMON_FLAPPING = ("b64a90c88375492ab53c0219c80d5e57", Priority.ERR)
    DAEMON_DEGRADED = ("71685a1b3c8a4f5b9a6f5056c192bbed", Priority.WARNING)
    DAEMON_STOPPING = ("c05b8fff3fa74d0195d2b6f875af14eb", Priority.INFO)
    PROFILE_LEARNED = ("e365afea2d0944758b37f68c75546c27", Priority.INFO)

    @property
    def message_id(self) -> str:
        return str(self.value[0])

    @property
    def priority(self) -> Priority:
        return Priority(self.value[1])


class Record(NamedTuple):
    """One journal record, before encoding."""

    event: Event
    message: str
    priority: Priority
    fields: Mapping[str, str]

    def all_fields(self) -> dict[str, str]:
        return native.standard_fields(self.message, self.event.message_id,
                                      int(self.priority), self.fields)


class Journal:
    """Sends records; the one collaborator every stage reports through.

    `echo` decides whether the readable message is also printed on `stream`; the CLI sets
    it from -q/-v and from whether stderr already is the journal.
    """

    def __init__(
        self,
        *,
        socket_path: str = native.JOURNAL_SOCKET,
        stream: TextIO | None = None,
        echo: bool | None = None,
        verbose: bool = False,
    ) -> None:
        self.sender = native.Sender(socket_path=socket_path, stream=stream, echo=echo,
                                    verbose=verbose)
        self.history: list[Record] = []  # what this run emitted, for --json documents

    def emit(
        self,
        event: Event,
        message: str,
        *,
        priority: Priority | None = None,
        unit: str | None = None,
        port: int | None = None,
        proto: str | None = None,
        holder_pid: int | None = None,
        holder_unit: str | None = None,
        holder_kind: str | None = None,
        holder_container: Container | None = None,
        action: str | None = None,
        result: str | None = None,
        extra: Mapping[str, str] | None = None,
        echo: bool = True,
    ) -> Record:
        fields: dict[str, str] = {}
        for key, value in (
            ("PORTGUARD_UNIT", unit),
            ("PORTGUARD_PORT", port),
            ("PORTGUARD_PROTO", proto),
            ("PORTGUARD_HOLDER_PID", holder_pid),
            ("PORTGUARD_HOLDER_UNIT", holder_unit),
            ("PORTGUARD_HOLDER_KIND", holder_kind),
            # the name the administrator gave it (`podman stop web`), else its short id
            ("PORTGUARD_HOLDER_CONTAINER", holder_container.label if holder_container
             else None),
            ("PORTGUARD_ACTION", action),
            ("PORTGUARD_RESULT", result),
        ):
            if value is not None:
                fields[key] = str(value)
        for key, value in (extra or {}).items():
            fields[native.field_name(key)] = value
        # MESSAGE is read in terminals (journalctl, `systemctl status`): no control
        # character a process put in its name gets there
        record = Record(event, shown_lines(message),
                        priority if priority is not None else event.priority, fields)
        self.history.append(record)
        self.sender.deliver(record.all_fields(), echo=echo)
        return record

    def close(self) -> None:
        self.sender.close()
