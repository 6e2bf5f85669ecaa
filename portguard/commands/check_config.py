"""`portguard check-config`: validate the config like `nginx -t`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from portguard.errors import ConfigError, ExitStatus

if TYPE_CHECKING:
    import argparse

    from portguard.app import App
    from portguard.report.output import Output


def run(args: argparse.Namespace, app: App, out: Output) -> ExitStatus:
    """Print OK: PATH, or every problem as FILE:LINE:COL: message (exit 78)."""
    path = app.config_path
    try:
        cfg = app.config
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
