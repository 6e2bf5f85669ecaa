"""The config compiled for preflight's fast path: what it needs, loadable without YAML.

Every guarded start runs `portguard preflight UNIT`; parsing the YAML with PyYAML and
building the schema's dataclasses cost more than the rest of a free-port preflight. So
after a full, validated load as root (`App.config`: check-config, install, the daemon,
any preflight), the services' ports and twin globs go, with the exact bytes they came from,
into one marshal file under /run/portguard/compiled (root's, 0700; /run is a tmpfs, so a
reboot or a new portguard starts afresh).

The fast path trusts that file only while all of these hold, and else loads the YAML:
- it runs as root, and the file is root's own regular file, mode 0600, not a symlink;
- it was written by this portguard version in this format;
- the config's bytes now are exactly the bytes that were validated (compared whole: a
  size and mtime can repeat within a clock tick; the file is at most 64 KiB);
- the config and every directory above it are still root's alone (config.trust), the
  same check a full load makes.
"""

from __future__ import annotations

import marshal
import os
import stat

from portguard import __version__
from portguard.config import trust
from portguard.config.unitnames import service_keys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from portguard.config.schema import Config

FORMAT = 1
CACHE_DIR = "/run/portguard/compiled"
_MAX_NAME = 240  # a file name is at most 255 bytes; longer config paths are not cached


class Entry:
    """What the fast path needs of one service: each declared port as the service binds it,
    `(address or None, port, "tcp"|"udp")`, ranges expanded (the values of `BindIntent`,
    without the model, whose enums a guarded start does without)."""

    __slots__ = ("binds", "reuse_address", "twin_globs")

    def __init__(self, binds: list[tuple[str | None, int, str]], reuse_address: bool,
                 twin_globs: list[str]) -> None:
        self.binds = binds
        self.reuse_address = reuse_address
        self.twin_globs = twin_globs


def cache_file(config_path: str) -> str | None:
    """Where the compiled form of `config_path` lives (None: a path too long to name)."""
    name = os.path.abspath(config_path).replace("%", "%25").replace("/", "%2F")
    return os.path.join(CACHE_DIR, name) if len(name) <= _MAX_NAME else None


def compile_config(config_path: str, source: bytes, cfg: Config) -> tuple[str, bytes] | None:
    """(where, what): the compiled form of `cfg`, validated from `source`, for
    `act.files.write_atomic` (mode 0600, CACHE_DIR 0700); None when not root or when the
    config is not root's alone (the fast path then just loads the YAML)."""
    target = cache_file(config_path)
    if target is None or not _root():
        return None
    try:
        if not trust.trusted(config_path, os.stat(config_path)):
            return None  # never compiled, so never trusted: e.g. a test's config under /tmp
    except OSError:
        return None
    services: dict[str, tuple[Any, ...]] = {}
    for service in cfg.services:
        specs = [(s.first, s.last, str(s.proto), s.address, s.text, s.line)
                 for s in service.ports]
        services[service.name] = (specs, service.reuse_address, service.twin_globs)
    return target, marshal.dumps((FORMAT, __version__, source, services))


def lookup(config_path: str, unit: str) -> Entry | None:
    """The compiled entry for `unit` if the compiled file can be trusted and declares it;
    None means "load the YAML" (not compiled, stale, untrusted, or not declared there)."""
    services = _load(config_path)
    if services is None:
        return None
    for key in service_keys(unit):
        if key in services:
            specs, reuse, globs = services[key]
            return Entry([(address, port, proto)
                          for first, last, proto, address, _, _ in specs
                          for port in range(first, last + 1)], reuse, globs)
    return None


def _load(config_path: str) -> dict[str, Any] | None:
    target = cache_file(config_path)
    if target is None or not _root():
        return None
    try:
        blob = trust.read_own(target, 1 << 20)
        fd = os.open(config_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            file_stat = os.fstat(fd)
            if not stat.S_ISREG(file_stat.st_mode):
                return None
            source = os.read(fd, 64 * 1024 + 1)
        finally:
            os.close(fd)
        fmt, version, stored, services = marshal.loads(blob)
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if fmt != FORMAT or version != __version__ or stored != source:
        return None
    if not trust.trusted(config_path, file_stat):
        return None
    return services  # type: ignore[no-any-return]


def _root() -> bool:
    """Only root compiles and trusts: /run/portguard is root's, and so is the config."""
    return os.geteuid() == 0

