"""The one place that builds portguard's collaborators and hands them to each other.

Commands receive an `App`; nothing else constructs a bus connection, a journal or an
observer. Tests build an `App` with their own parts.

Collaborators are built on first use and their modules imported then: `who` on a free
port must not pay for YAML or D-Bus (tens of milliseconds of imports each).
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from portguard.config.schema import Config
    from portguard.observe.observer import Observer
    from portguard.observe.systemd.units import Systemd
    from portguard.report.journal import Journal

DEFAULT_CONFIG_FILE = "/etc/portguard/config.yaml"


def default_config_file() -> str:
    """$PORTGUARD_CONFIG when set and non-empty, else /etc/portguard/config.yaml."""
    return os.environ.get("PORTGUARD_CONFIG", "") or DEFAULT_CONFIG_FILE


def default_config_path() -> Path:
    """default_config_file() as a Path."""
    from pathlib import Path  # not at import time: `who` never needs it (~4 ms)

    return Path(default_config_file())


def _connect_systemd() -> Systemd:
    from portguard.observe.systemd.units import Systemd
    return Systemd.connect()


class App:
    """`make_journal` builds the journal on first use (the cli passes it): `who` and
    `status` record nothing, and need not import the journal's event table (~2 ms)."""

    def __init__(self, config_path: Path | str | None = None, journal: Journal | None = None,
                 connect_systemd: Callable[[], Systemd] = _connect_systemd, *,
                 make_journal: Callable[[], Journal] | None = None) -> None:
        self._config_path = config_path
        self._journal = journal
        self._make_journal = make_journal
        self.connect_systemd = connect_systemd
        self._observer: Observer | None = None
        self.unit_states = True  # False: name holders' units from cgroups, skip D-Bus
        self._config: Config | None = None

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            if self._make_journal is not None:
                self._journal = self._make_journal()
            else:
                from portguard.report.journal import Journal
                self._journal = Journal()
        return self._journal

    @property
    def config_path(self) -> Path:
        from pathlib import Path

        return Path(self._config_path) if self._config_path else default_config_path()

    @property
    def observer(self) -> Observer:
        if self._observer is None:
            from portguard.observe.observer import Observer, UnitLookup
            connect = self.connect_systemd if self.unit_states else None
            self._observer = Observer(UnitLookup(connect, self.connect_systemd))
        return self._observer

    @property
    def config(self) -> Config:
        """The validated config, loaded on first use (commands like `who` need none)."""
        if self._config is None:
            from portguard.config.schema import load_source
            path = self.config_path
            self._config, source = load_source(path)
            store_compiled(str(path), source, self._config)  # for the next guarded start
        return self._config

    def close(self) -> None:
        if self._observer is not None:
            self._observer.unit_lookup.close()
        if self._journal is not None:
            self._journal.close()


def store_compiled(config_path: str, source: bytes, cfg: Config) -> None:
    """Write the compiled config (config.compiled) for preflight's fast path; quietly
    skip what cannot be (not root, a config not root's alone, /run/portguard unwritable):
    the fast path then loads the YAML."""
    import contextlib

    from portguard.act import files
    from portguard.config import compiled
    found = compiled.compile_config(config_path, source, cfg)
    if found is None:
        return
    with contextlib.suppress(OSError):
        files.write_atomic(found[0], found[1], mode=0o600, dir_mode=0o700)
