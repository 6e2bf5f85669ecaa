"""What the config tests share: the contract's (docs/) example config, and files to check-config."""

from __future__ import annotations

import io
from pathlib import Path

from portguard.cli import main

REPO = Path(__file__).resolve().parents[2]

# the contract's (docs/) config block, verbatim.
DESIGN_EXAMPLE = """\
defaults:
  policy: stop            # stop | wait | fail | warn
  on_foreign: fail        # fail | wait
  timeout: 30s            # whole budget of one preflight
  kill_after: 10s         # signal -> SIGKILL
  signal: SIGTERM
  reuse_address: true     # the service sets SO_REUSEADDR
protected: [sshd.service, "systemd-*.service", dbus.service]
services:
  web@.service:           # a template key matches every instance
    ports: ["8080", "127.0.0.1:9090/tcp", "[::]:8443", "5353/udp", "7000-7010/tcp"]
    policy: stop
    duplicates:           # optional, beyond the automatic ExecStart match
      units: ["web-legacy.service"]
      commands: ["/opt/web/bin/webd*"]
daemon:                   # only read by `portguard daemon`
  interval: 30s           # reconcile at least this often (D-Bus events trigger passes too)
  restart: true           # start a configured unit again once its port is cleared
  flap_limit: 3           # the same conflict resolved this often within flap_window ...
  flap_window: 10m        # ... is reported, no longer fought
  metrics_file: /var/lib/prometheus/node-exporter/portguard.prom   # optional
"""


def write(tmp_path: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def check(path: Path, *extra: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(["--config", str(path), *extra, "check-config"], stdout=out, stderr=err)
    return status, out.getvalue(), err.getvalue()
