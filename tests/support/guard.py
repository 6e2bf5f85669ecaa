"""portguard on real daemons in a field sandbox: its config, `install`, its journal.

    g = Guard(sb, "nginx.service: {ports: ['80'], policy: stop}")   # writes the config
    g.install("nginx.service")      # `portguard install` inside: the drop-in lands in the
                                    # sandbox's private /etc/systemd/system
    g.records(...)                  # portguard's journal records since the Guard was made
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from support.sandbox import Sandbox

# MESSAGE_IDs: the contract (README "Journal"), spelled out so a changed id fails here.
CONFLICT = "d74d81e4b74f43ecb06f332d7e10fca9"
SIGNAL = "b7876e4d57b34eef99981e9da9de1233"
KILL = "744a196b2567446ba506391298360d15"
STOP_UNIT = "32df9301fc754f1285c3344dda6a731d"
REFUSED = "1dd1d9a38bb34678aad2e121395fc7f2"
PORTS_CLEAR = "718392d18d1d40e2a9e43cb92f8fe39d"


class Guard:
    def __init__(self, sb: Sandbox, services: str, *, extra: str = "") -> None:
        self.sb = sb
        self.cfg = f"/etc/portguard/field-{secrets.token_hex(3)}.yaml"
        sb.write_file(self.cfg, "defaults:\n  kill_after: 3s\n  timeout: 15s\n"
                      f"{extra}services:\n" + "".join(
                          f"  {line}\n" for line in services.strip().splitlines()))
        checked = self.run("check-config")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        self.cursor = sb.cursor()
        self.installed: list[str] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.sb.portguard("--config", self.cfg, *args, timeout=60)

    def install(self, unit: str) -> None:
        """`portguard install UNIT` inside: the drop-in must land in the sandbox's private
        /etc/systemd/system, never in the host's."""
        dropin = f"/etc/systemd/system/{unit}.d/portguard.conf"
        on_host = os.path.exists(dropin)
        done = self.run("install", unit)
        assert done.returncode == 0, done.stdout + done.stderr
        assert dropin in done.stdout
        assert "ExecStartPre=+" in self.sb.read_file(dropin)
        assert os.path.exists(dropin) == on_host, f"install wrote the host's {dropin}"
        self.installed.append(unit)

    def uninstall(self) -> None:
        for unit in self.installed:
            self.run("uninstall", unit)
        self.installed.clear()

    def records(self, message_id: str | None = None, **fields: str | int) -> list[dict[str, Any]]:
        """portguard's records since this Guard was made, with this id and these fields
        (holder_pid=5 means PORTGUARD_HOLDER_PID=5)."""
        out = []
        for r in self.sb.journal("SYSLOG_IDENTIFIER=portguard", since_cursor=self.cursor):
            if message_id and r.get("MESSAGE_ID") != message_id:
                continue
            if all(r.get(f"PORTGUARD_{k.upper()}") == str(v) for k, v in fields.items()):
                out.append(r)
        return out

    def signalled(self) -> set[int]:
        """Pids portguard journaled sending a signal to (SIGNAL or KILL records whose
        action is signal or kill; "exited before it could be signalled" is not one)."""
        return {int(r["PORTGUARD_HOLDER_PID"]) for r in self.records()
                if r.get("MESSAGE_ID") in (SIGNAL, KILL)
                and r.get("PORTGUARD_ACTION") in ("signal", "kill")}


@contextmanager
def guarding(sb: Sandbox, unit: str, port: int, *, stop: str | None = None,
             keys: str = "") -> Iterator[Guard]:
    """`unit` declared on `port` with policy stop (and more `keys`, YAML lines under the
    service) and installed; afterwards the units matching `stop` (default: unit) are
    stopped and the drop-in removed."""
    g = Guard(sb, f"{unit}:\n  ports: ['{port}']\n  policy: stop\n{keys}")
    g.install(unit)
    try:
        yield g
    finally:
        sb.systemctl("stop", stop or unit, timeout=60)
        g.uninstall()
