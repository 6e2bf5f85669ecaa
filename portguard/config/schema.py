"""The config file: its schema, its dataclasses, and the checks on the file itself.

`load` reports every problem it finds as `FILE:LINE:COL: message` in one ConfigError;
value grammars and the strict YAML layer live in portguard.config.values.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import functools
import ipaddress
import os
import shlex
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from signal import Signals

import yaml

from portguard.config import strictyaml as sy
from portguard.config import trust
from portguard.config import values as ct
from portguard.config.unitnames import mangle_unit, service_keys
from portguard.errors import ConfigError, NotPermittedError
from portguard.model import PortSpec

# A config is a few KiB (config.example.yaml: 5 KiB). PyYAML's pure-Python parser needs
# ~10 us of CPU per byte at worst (a flow list of one-digit items): 64 KiB is read or
# refused in well under a second, 1 MiB took ~10 s.
MAX_BYTES = 64 * 1024
MAX_PORT_ENTRIES = 256  # per service; ranges cover more
ALWAYS_PROTECTED = ("init.scope", "portguard.service")  # PID 1's unit and portguard's own


class Policy(enum.StrEnum):
    STOP = "stop"
    WAIT = "wait"
    FAIL = "fail"
    WARN = "warn"


class OnForeign(enum.StrEnum):
    FAIL = "fail"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Defaults:
    policy: Policy = Policy.STOP
    on_foreign: OnForeign = OnForeign.FAIL
    timeout: float = 30.0  # seconds: the whole budget of one preflight
    kill_after: float = 10.0  # seconds from the signal to SIGKILL
    signal: Signals = Signals.SIGTERM
    reuse_address: bool = True


@dataclass(frozen=True, slots=True)
class Duplicates:
    units: tuple[str, ...] = ()  # unit globs, normalised like systemctl (`x` -> `x.service`)
    commands: tuple[str, ...] = ()  # fnmatch globs over the executable / command line


@dataclass(frozen=True, slots=True)
class Service:
    name: str  # always ends in `.service`; `web@.service` is a template
    ports: tuple[PortSpec, ...]
    policy: Policy = Policy.STOP
    on_foreign: OnForeign = OnForeign.FAIL
    timeout: float = 30.0
    kill_after: float = 10.0
    signal: Signals = Signals.SIGTERM
    reuse_address: bool = True
    duplicates: Duplicates = field(default_factory=Duplicates)
    line: int = 0
    program: str = ""  # the program the unit really runs (docs/identity.md, "Profiles")
    user: str = ""  # ... and the user it runs as

    @property
    def is_template(self) -> bool:
        return self.name.endswith("@.service")

    @property
    def instance_glob(self) -> str:
        """The units this entry covers, as a glob: `web@*.service` for a template."""
        return self.name.replace("@.service", "@*.service") if self.is_template else self.name

    @property
    def twin_globs(self) -> list[str]:
        """Units that are this service's twins: `duplicates.units`, then (for a template)
        its other instances."""
        return [*self.duplicates.units, *([self.instance_glob] if self.is_template else [])]

    def matches(self, unit: str) -> bool:
        """Whether `unit` is this service's unit or, for a template, one of its instances."""
        name = mangle_unit(unit)
        if name == self.name:
            return True
        prefix = self.name.removesuffix(".service")
        return self.is_template and name.startswith(prefix) and name.endswith(".service")


@dataclass(frozen=True, slots=True)
class DaemonSettings:
    interval: float = 30.0
    restart: bool = True
    flap_limit: int = 3
    flap_window: float = 600.0
    metrics_file: Path | None = None


@dataclass(frozen=True, slots=True)
class Config:
    path: Path | None
    defaults: Defaults = field(default_factory=Defaults)
    protected: tuple[str, ...] = ()  # unit globs as configured (bare names get .service)
    services: tuple[Service, ...] = ()
    daemon: DaemonSettings = field(default_factory=DaemonSettings)

    def service_for(self, unit: str) -> Service | None:
        """The service declared for `unit`: its own key first, then its template's."""
        by_name = {service.name: service for service in self.services}
        for key in service_keys(unit):
            if key in by_name:
                return by_name[key]
        return None

    def is_protected(self, unit: str) -> bool:
        """Whether `unit` matches a `protected` glob, or is PID 1's or portguard's own."""
        name = mangle_unit(unit)
        return any(fnmatch.fnmatchcase(name, g) for g in (*ALWAYS_PROTECTED, *self.protected))


def load(path: Path, *, check_owner: bool | None = None) -> Config:
    """Read and validate `path`; `check_owner` (default: when root) refuses unsafe modes."""
    return load_source(path, check_owner=check_owner)[0]


def load_source(path: Path, *, check_owner: bool | None = None) -> tuple[Config, bytes]:
    """`load`, and the bytes it validated (what config.compiled stores beside them)."""
    data, file_stat = _read(path)
    problems = []
    if check_owner if check_owner is not None else _running_as_root():
        problems = ownership_problems(path, file_stat)
    if len(data) > MAX_BYTES:
        raise ConfigError([*problems, f"{path}: larger than {MAX_BYTES // 1024} KiB;"
                           " refusing to parse it"])
    data = data.removeprefix(b"\xef\xbb\xbf")  # the UTF-8 byte-order mark some editors write
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError([*problems, f"{path}:{line}: not UTF-8 (byte"
                           f" 0x{data[exc.start]:02x}); save the file as UTF-8"]) from None
    return _parse(text, str(path), path, problems), data


def loads(text: str, *, filename: str = "<string>") -> Config:
    """Validate config text: `load` without the file and ownership checks."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise ConfigError([f"{filename}: larger than {MAX_BYTES // 1024} KiB; refusing to"
                           " parse it"])
    return _parse(text.removeprefix("\ufeff"), filename, None, [])


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _read(path: Path) -> tuple[bytes, os.stat_result]:
    """At most MAX_BYTES + 1 bytes of `path`, and the stat of what was actually opened."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK  # a FIFO must not hang
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such file; create it (config.example.yaml documents"
                           " every key) or point --config or $PORTGUARD_CONFIG at one"]) from None
    except PermissionError:
        raise NotPermittedError(f"cannot read the config {path}: permission denied; run"
                                " portguard as root (e.g. with sudo) or let this user read"
                                " the file") from None
    except OSError as exc:
        raise ConfigError([f"{path}: cannot open: {exc.strerror}"]) from None
    file_stat = os.fstat(fd)
    if not stat.S_ISREG(file_stat.st_mode):
        os.close(fd)
        raise ConfigError([f"{path}: not a regular file"])
    with os.fdopen(fd, "rb") as stream:
        try:
            return stream.read(MAX_BYTES + 1), file_stat
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None


def ownership_problems(path: Path, file_stat: os.stat_result, *,
                       stat_dir: Callable[[Path], os.stat_result] = os.stat) -> list[str]:
    """Why a root-run portguard must not trust `path`, in the manner of sshd's StrictModes.

    The file and every directory above it, up to `/`, must be owned by root and not
    writable by group or others: whoever can write any of them can make portguard stop
    services. Both the path as given and its resolved target are walked, so a symlink
    cannot lead around the check. Sticky world-writable directories such as /tmp get no
    exception (sshd makes none either): anyone can create names there, and a config has
    no business in one. The fix offered there is to move the file, not to chmod /tmp.
    """
    problems = []
    if why := trust.unsafe(file_stat):
        problems.append(f"{path}: {why}; a root-run portguard refuses a config others can"
                        f" change. Fix: {_fix(file_stat, path)}")
    for directory in map(Path, trust.ancestors(str(path))):
        try:
            dir_stat = stat_dir(directory)
        except OSError as exc:
            problems.append(f"{path}: cannot check directory {directory}: {exc.strerror}")
            continue
        if why := trust.unsafe(dir_stat):
            sticky = dir_stat.st_mode & stat.S_ISVTX and dir_stat.st_mode & stat.S_IWOTH
            fix = ("move the config to a root-owned directory such as /etc/portguard"
                   if sticky else _fix(dir_stat, directory))
            problems.append(f"{path}: directory {directory} {why}; others could replace"
                            f" the config. Fix: {fix}")
    return problems


def _fix(st: os.stat_result, path: Path) -> str:
    quoted = shlex.quote(str(path))
    fixes = [f"chown root:root {quoted}"] if st.st_uid != 0 else []
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        fixes.append(f"chmod go-w {quoted}")
    return " && ".join(fixes)


def _parse(text: str, filename: str, path: Path | None, problems: list[str]) -> Config:
    schema = _Schema()
    root = sy.compose(text, schema.problems)
    config = schema.config(root, path) if root is not None else None
    found = problems + [f"{filename}:{line}:{col}: {message}"
                        for line, col, message in sorted(schema.problems)]
    if found or config is None:
        raise ConfigError(found or [f"{filename}: invalid config"])
    return config


_SETTINGS = ("policy", "on_foreign", "timeout", "kill_after", "signal", "reuse_address")
_SERVICE_KEYS = ("ports", *_SETTINGS, "duplicates", "program", "user")
_DAEMON_KEYS = ("interval", "restart", "flap_limit", "flap_window", "metrics_file")


class _Schema(sy.NodeReader):
    """The config's shape: which keys exist where, and what each holds."""

    def config(self, root: yaml.Node, path: Path | None) -> Config | None:
        if not isinstance(root, yaml.MappingNode):
            self.error(root, f"the top level must be a mapping with 'services:', not"
                             f" {sy.kind(root)}")
            return None
        top = {key: value for key, _, value in
               self.mapping(root, "", ("defaults", "protected", "services", "daemon"))}
        defaults = Defaults()
        if "defaults" in top:
            defaults = self.settings(self.mapping(top["defaults"], "defaults", _SETTINGS),
                                     defaults)
        protected = self.strings(top["protected"], "protected", ct.unit_glob) \
            if "protected" in top else ()
        if "services" not in top:
            self.error(root, "no 'services:' key; declare the services to guard")
        services = self.services(top["services"], defaults) if "services" in top else ()
        daemon = self.daemon(top["daemon"]) if "daemon" in top else DaemonSettings()
        return Config(path, defaults, protected, services, daemon)

    def settings(self, entries: sy.Entries, base: Defaults) -> Defaults:
        """`base` with the keys shared by `defaults` and each service applied."""
        readers: dict[str, Callable[[yaml.Node, str], object]] = {
            "policy": functools.partial(self.choice, options=Policy),
            "on_foreign": functools.partial(self.choice, options=OnForeign),
            "timeout": self.duration,
            "kill_after": self.duration,
            "signal": functools.partial(self.parsed, parse=ct.signal_by_name,
                                        expected="a signal name"),
            "reuse_address": self.boolean,
        }
        changes = {key: value for key, _, node in entries if key in readers
                   and (value := readers[key](node, key)) is not None}
        return dataclasses.replace(base, **changes)  # type: ignore[arg-type]

    def duration(self, node: yaml.Node, what: str) -> float | None:
        return self.parsed(node, what, ct.duration, "a duration")

    def services(self, node: yaml.Node, defaults: Defaults) -> tuple[Service, ...]:
        out: list[Service] = []
        first_line: dict[str, int] = {}
        for key, key_node, value in self.mapping(node, "services", None):
            name = self.parsed(key_node, "service", ct.service_name, "a unit name") or key
            line = key_node.start_mark.line + 1
            if name in first_line:
                self.error(key_node, f"service '{name}' is declared twice (first at line"
                                     f" {first_line[name]})")
            first_line.setdefault(name, line)
            if sy.is_null(value):
                self.error(key_node, f"service '{name}' has no settings; 'ports' is required")
                continue
            entries = self.mapping(value, f"service '{name}'", _SERVICE_KEYS)
            found = {k: v for k, _, v in entries}
            if "ports" not in found and isinstance(value, yaml.MappingNode):
                self.error(key_node, f"service '{name}' has no 'ports'; declare at least one")
            s = self.settings(entries, defaults)
            ports = self.ports(found["ports"]) if "ports" in found else ()
            duplicates = self.duplicates(found["duplicates"]) if "duplicates" in found \
                else Duplicates()
            program = self.parsed(found["program"], "program", program_path, "an absolute path",
                                  numbers=False) if "program" in found else None
            user = self.parsed(found["user"], "user", user_name, "a user name or uid") \
                if "user" in found else None
            out.append(Service(name, ports, s.policy, s.on_foreign, s.timeout, s.kill_after,
                               s.signal, s.reuse_address, duplicates, line,
                               program or "", user or ""))
        return tuple(out)

    def ports(self, node: yaml.Node) -> tuple[PortSpec, ...]:
        if not isinstance(node, yaml.SequenceNode):
            if node.tag != sy.REFUSED:
                self.error(node, 'ports: expected a list such as ["8080", "127.0.0.1:9090/tcp"],'
                                 f" got {sy.kind(node)}")
            return ()
        if not node.value:
            self.error(node, "ports: empty list; declare at least one port")
        if len(node.value) > MAX_PORT_ENTRIES:
            self.error(node, f"ports: more than {MAX_PORT_ENTRIES} entries; use ranges")
            return ()
        specs: list[PortSpec] = []
        for item in node.value:
            spec = self.parsed(item, "port", functools.partial(_port, node=item), "a port")
            if spec is None:
                continue
            clash = next((s for s in specs if _overlap(s, spec)), None)
            if clash is not None:
                self.error(item, f"port '{spec}' overlaps '{clash}' (line {clash.line}) of the"
                                 " same service; declare each port once")
            specs.append(spec)
        return tuple(specs)

    def duplicates(self, node: yaml.Node) -> Duplicates:
        found = {k: v for k, _, v in self.mapping(node, "duplicates", ("units", "commands"))}
        units = self.strings(found["units"], "duplicates.units", _twin_glob) \
            if "units" in found else ()
        commands = self.strings(found["commands"], "duplicates.commands", _command_glob) \
            if "commands" in found else ()
        return Duplicates(units, commands)

    def daemon(self, node: yaml.Node) -> DaemonSettings:
        readers: dict[str, Callable[[yaml.Node, str], object]] = {
            "interval": self.duration,
            "flap_window": self.duration,
            "restart": self.boolean,
            "flap_limit": functools.partial(self.parsed, expected="a whole number",
                                            parse=lambda t: ct.whole_number(t, 1, 1000)),
            "metrics_file": functools.partial(self.parsed, parse=_metrics_path,
                                              expected="a path", numbers=False),
        }
        changes = {key: value for key, _, node in self.mapping(node, "daemon", _DAEMON_KEYS)
                   if (value := readers[key](node, key)) is not None}
        return dataclasses.replace(DaemonSettings(), **changes)  # type: ignore[arg-type]


def _port(text: str, node: yaml.Node) -> PortSpec:
    """A port spec; a plain YAML number must be written as a plain decimal integer."""
    plain = isinstance(node, yaml.ScalarNode) and node.style is None
    if plain and node.tag in (sy.TAG + "int", sy.TAG + "float"):
        why = ct.number_trap(text)
        if why is None and node.tag == sy.TAG + "float":
            why = f"'{text}' is not a whole number"
        if why is not None:
            raise ValueError(f"{why}; a port is a whole number 1-65535")
    return ct.port_spec(text, node.start_mark.line + 1)


def _overlap(a: PortSpec, b: PortSpec) -> bool:
    """Whether one service declaring both declares the same socket twice.

    No address overlaps every address; a family's wildcard overlaps that family. IPv4
    and IPv6 never overlap here: `0.0.0.0:443` plus `[::]:443` is the usual pair of
    listeners of a server that sets IPV6_V6ONLY (nginx does), not a mistake.
    """
    if a.proto != b.proto or a.last < b.first or b.last < a.first:
        return False
    if a.address is None or b.address is None or a.address == b.address:
        return True
    ia, ib = ipaddress.ip_address(a.address), ipaddress.ip_address(b.address)
    return ia.version == ib.version and (ia.is_unspecified or ib.is_unspecified)


def _twin_glob(text: str) -> str:
    glob = ct.unit_glob(text)
    if not glob.removesuffix(".service").strip("*?"):  # every service a twin: stop them all
        raise ValueError(f"'{text}' would make every unit a duplicate; name the units")
    return glob


def _command_glob(text: str) -> str:
    if not text.strip("*?/ "):  # every holder a stray: policy would stop foreign programs
        raise ValueError(f"'{text}' would match every program; name the program")
    return text


def program_path(text: str) -> str:
    if not text.startswith("/") or text.endswith("/") or any(c in text for c in "*?["):
        raise ValueError(f"'{text}' must be the absolute path of the program file, "
                         "e.g. /usr/lib/postgresql/15/bin/postgres")
    return text


def user_name(text: str) -> str:
    if not text.isdigit() and (text.startswith("-") or not all(
            c.isalnum() or c in "._-$" for c in text)):
        raise ValueError(f"'{text}' is not a user name or uid")
    return text


def _metrics_path(text: str) -> Path:
    if not text.startswith("/") or text.endswith("/"):
        raise ValueError(f"'{text}' must be an absolute file path")
    return Path(text)
