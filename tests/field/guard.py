"""portguard on real daemons in a field sandbox: its config, `install`, its journal.

    g = Guard(sb, "nginx.service: {ports: ['80'], policy: stop}")   # writes the config
    g.install("nginx.service")      # `portguard install` inside: the drop-in lands in the
                                    # sandbox's private /etc/systemd/system
    g.records(...)                  # portguard's journal records since the Guard was made
"""

from __future__ import annotations

import secrets
import subprocess
from typing import Any

from sandbox import Sandbox

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
        done = self.run("install", unit)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"/etc/systemd/system/{unit}.d/portguard.conf" in done.stdout
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
        """Pids portguard journaled a signal to (SIGNAL or KILL records)."""
        return {int(r["PORTGUARD_HOLDER_PID"]) for r in self.records()
                if r.get("MESSAGE_ID") in (SIGNAL, KILL)}
