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


def instance_template(unit: str) -> str | None:
    """An instance's template (`web@blue.service` -> `web@.service`); None for a template
    itself (`web@.service`) or a unit that is no instance."""
    prefix, at, rest = unit.partition("@")
    if not at or rest.startswith("."):
        return None
    return f"{prefix}@.{rest.rpartition('.')[2]}"


def service_keys(unit: str) -> tuple[str, ...]:
    """The config keys that may declare `unit`, in order: its own name, then its template's
    (`web@blue.service` -> `web@blue.service`, `web@.service`)."""
    name = mangle_unit(unit)
    template = instance_template(name) if name.endswith(".service") else None
    return (name, template) if template else (name,)
