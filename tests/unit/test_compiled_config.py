"""portguard.config.compiled: what preflight's fast path may read instead of the YAML.

Round trips against the full load (the same services, ports and twin globs, by the same
lookup rules as Config.service_for) and every reason to fall back to the YAML. The real
thing, as root on a real systemd, is tests/integration/test_preflight_compiled.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from portguard.app import store_compiled
from portguard.config import compiled, trust
from portguard.config.schema import load_source
from portguard.decide import conflicts

CONFIG = """\
services:
  web@.service:
    ports: ["8080", "127.0.0.1:9090/tcp", "[::]:8443", "5353/udp", "7000-7002/tcp"]
    duplicates:
      units: ["web-legacy.service"]
  api.service:
    ports: ["3000"]
    reuse_address: false
"""


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(compiled, "CACHE_DIR", str(tmp_path / "compiled"))
    monkeypatch.setattr(compiled, "_root", lambda: True)
    # tmp_path sits under the world-writable /tmp, which trust rightly refuses; trust
    # itself is tested below
    monkeypatch.setattr(trust, "trusted", lambda path, st: True)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    cfg, source = load_source(path, check_owner=False)
    store_compiled(str(path), source, cfg)
    return path


@pytest.mark.parametrize("unit", ["web@blue.service", "web@blue", "api.service", "api"])
def test_lookup_finds_what_service_for_finds(setup: Path, unit: str) -> None:
    cfg, _ = load_source(setup, check_owner=False)
    service = cfg.service_for(unit)
    assert service is not None
    entry = compiled.lookup(str(setup), unit)
    assert entry is not None
    # each port as the service binds it: what conflicts.intents makes of the declaration
    assert entry.binds == [(i.address, i.port, str(i.proto)) for spec in service.ports
                           for i in conflicts.intents(spec, reuse_address=False)]
    assert entry.reuse_address == service.reuse_address
    assert entry.twin_globs == service.twin_globs
    if service.is_template:
        assert entry.twin_globs == ["web-legacy.service", "web@*.service"]


@pytest.mark.parametrize("unit", ["web.service", "other.service", "web@.socket"])
def test_an_undeclared_unit_is_left_to_the_full_load(setup: Path, unit: str) -> None:
    assert compiled.lookup(str(setup), unit) is None


def test_changed_bytes_are_not_trusted(setup: Path) -> None:
    text = setup.read_text()
    setup.write_text(text.replace('"3000"', '"3001"'))  # same size, same directory entry
    assert compiled.lookup(str(setup), "api.service") is None


def test_another_version_or_format_is_not_trusted(setup: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert compiled.lookup(str(setup), "api.service") is not None
    monkeypatch.setattr(compiled, "__version__", "0.0.0-other")
    assert compiled.lookup(str(setup), "api.service") is None
    monkeypatch.undo()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o400])
def test_a_compiled_file_with_another_mode_is_not_trusted(setup: Path, mode: int) -> None:
    target = compiled.cache_file(str(setup))
    assert target is not None
    os.chmod(target, mode)
    assert compiled.lookup(str(setup), "api.service") is None


def test_a_symlinked_compiled_file_is_not_followed(setup: Path, tmp_path: Path) -> None:
    target = compiled.cache_file(str(setup))
    assert target is not None
    os.rename(target, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", target)
    assert compiled.lookup(str(setup), "api.service") is None


def test_garbage_is_not_trusted(setup: Path) -> None:
    target = compiled.cache_file(str(setup))
    assert target is not None
    Path(target).write_bytes(b"\x00not marshal")
    assert compiled.lookup(str(setup), "api.service") is None


def test_nothing_is_compiled_or_trusted_unless_root(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "CACHE_DIR", str(tmp_path / "compiled"))
    monkeypatch.setattr(compiled, "_root", lambda: False)
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    cfg, source = load_source(path, check_owner=False)
    store_compiled(str(path), source, cfg)
    assert not (tmp_path / "compiled").exists()
    assert compiled.lookup(str(path), "api.service") is None


def test_trust_walks_every_directory_above_the_file_and_its_target(tmp_path: Path) -> None:
    real = tmp_path / "real" / "config.yaml"
    real.parent.mkdir()
    real.write_text("x")
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    found = trust.ancestors(str(link))
    assert str(tmp_path) in found and str(real.parent) in found and "/" in found
    assert found.index(str(tmp_path)) < found.index(str(real.parent))  # lexical ones first


def test_trust_refuses_a_file_under_a_world_writable_directory(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    path = shared / "config.yaml"
    path.write_text("x")
    assert not trust.trusted(str(path), os.stat(path))
