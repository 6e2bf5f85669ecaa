"""The journal's native protocol: a record's fields, sent as one datagram, else on stderr.

Records are written with the protocol `sd_journal_sendv()` and `pystemd.journal.sendv`
speak (https://systemd.io/JOURNAL_NATIVE_PROTOCOL/) rather than through pystemd, whose
journal module pulls in its D-Bus layer and lxml. When the journal cannot take a record
(no socket, journald stopped), the record goes to stderr with its fields, so nothing is
lost; when stderr is not the journal (a terminal, a pipe), the readable message is echoed
there as well. `report.journal` (the events and their MESSAGE_IDs) sends through here;
preflight's fast path sends its one record through here directly, without the event
enums (docs/architecture.md, "What a start costs").
"""

from __future__ import annotations

import _socket
import os
import struct
import sys

from portguard.text import shown

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import TextIO

JOURNAL_SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "portguard"
SEND_TIMEOUT = 0.5  # seconds: a wedged journald costs at most this, then stderr gets it
_MAX_DATAGRAM = 200_000  # well below the default SO_SNDBUF; our records are small
# report.journal's Event.PORTS_CLEAR (MESSAGE_ID, priority info), spelled here once so
# that the fast path can send it without the enum
PORTS_CLEAR = ("718392d18d1d40e2a9e43cb92f8fe39d", 6)


def standard_fields(message: str, message_id: str, priority: int,
                    fields: Mapping[str, str]) -> dict[str, str]:
    """A record's fields: MESSAGE, MESSAGE_ID, PRIORITY, SYSLOG_IDENTIFIER, then `fields`."""
    out = {"MESSAGE": message, "MESSAGE_ID": message_id, "PRIORITY": str(priority),
           "SYSLOG_IDENTIFIER": IDENTIFIER}
    out.update(fields)
    return out


def field_name(key: str) -> str:
    """`PORTGUARD_<KEY>` in the journal's alphabet: journald drops any other field name."""
    name = "PORTGUARD_" + "".join(
        c if (c.isascii() and c.isalnum()) or c == "_" else "_" for c in key.upper())
    return name[:64]


def encode(fields: Mapping[str, str]) -> bytes:
    """Encode fields in the native protocol: KEY=VALUE lines, length-prefixed when binary."""
    out = bytearray()
    for key, value in fields.items():
        data = value.encode("utf-8", "replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when stderr is the journal stream systemd connected us to ($JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class Sender:
    """Delivers records to the journal (one socket, kept), else to `stream`.

    `echo` (None: unless stderr is the journal) prints each readable message on `stream`
    too; `verbose` adds the fields to that line.
    """

    def __init__(self, *, socket_path: str = JOURNAL_SOCKET, stream: TextIO | None = None,
                 echo: bool | None = None, verbose: bool = False) -> None:
        self.socket_path = socket_path
        self.stream = stream if stream is not None else sys.stderr
        self.echo = (not stderr_is_journal(self.stream)) if echo is None else echo
        self.verbose = verbose
        self._sock: _socket.socket | None = None

    def deliver(self, fields: Mapping[str, str], *, echo: bool = True) -> None:
        """Send a record's fields (standard_fields); on failure write them to the stream."""
        if not self._send(fields):
            self._write(fields, with_fields=True)
        elif self.echo and echo:
            self._write(fields, with_fields=self.verbose)

    def _send(self, fields: Mapping[str, str]) -> bool:
        data = encode(fields)
        if len(data) > _MAX_DATAGRAM:
            return False
        try:
            if self._sock is None:
                self._sock = _socket.socket(_socket.AF_UNIX,
                                            _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
                self._sock.settimeout(SEND_TIMEOUT)  # every wait has a bound
            self._sock.sendto(data, self.socket_path)
        except OSError:
            return False
        return True

    def _write(self, fields: Mapping[str, str], *, with_fields: bool) -> None:
        line = f"portguard: {fields.get('MESSAGE', '')}"
        if with_fields:
            pairs = " ".join(f"{k}={shown(v)}" for k, v in fields.items() if k != "MESSAGE")
            line += f" [{pairs}]"
        try:  # noqa: SIM105 -- not contextlib.suppress: contextlib is not on the fast path
            print(line, file=self.stream, flush=True)
        except (OSError, ValueError):  # stderr closed: nowhere to report
            pass

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
