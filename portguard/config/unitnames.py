"""Unit names as systemctl reads them, and which config key declares a unit.

No imports: preflight's fast path uses these before anything else is loaded.
"""

from __future__ import annotations

UNIT_TYPES = ("service", "socket", "target", "device", "mount", "automount", "swap",
              "timer", "path", "slice", "scope")


def mangle_unit(name: str) -> str:
    """Append `.service` to a name without a unit-type suffix, as systemctl does."""
    suffix = name.rpartition(".")[2] if "." in name else ""
    keep = suffix in UNIT_TYPES or any(c in suffix for c in "*?[")  # `foo.*` stays a glob
    return name if keep else f"{name}.service"


def service_keys(unit: str) -> tuple[str, ...]:
    """The config keys that may declare `unit`, in order: its own name, then its template's
    (`web@blue.service` -> `web@blue.service`, `web@.service`)."""
    name = mangle_unit(unit)
    prefix, at, _ = name.partition("@")
    if at and name.endswith(".service"):
        return (name, f"{prefix}@.service")
    return (name,)
