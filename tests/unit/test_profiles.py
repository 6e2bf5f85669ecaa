"""Service profiles (docs/identity.md, "Profiles"): matching in classify, the stored
form, and when a stored profile may be trusted. A wrapped daemon here is memcached:
its unit runs a wrapper as root, the daemon drops to memcache (uid 111)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portguard import __version__
from portguard.config.schema import ALWAYS_PROTECTED, loads
from portguard.decide.classify import Context, Kind, classify_holder
from portguard.model import FileId, Holder, Learned, Process, Profile, ProgramId, Proto, Socket
from portguard.observe import profiles

CONFIG = loads("services:\n  memcached.service:\n    ports: ['11211']\n")
SERVICE = CONFIG.services[0]
UNIT = "memcached.service"
MEMCACHE = 111
WRAPPER = ProgramId(FileId(8, 500), target=FileId(8, 500), interpreted=True)
MEMCACHED = ProgramId(FileId(8, 600))
OTHER = ProgramId(FileId(8, 700))
NS = 4026531836
PROFILE = Profile(UNIT, MEMCACHED, ("/usr/bin/memcached",), MEMCACHE, "memcache",
                  sockets=(Learned("127.0.0.1", 11211, Proto.TCP, True, False),),
                  seen=1_765_160_000.0)


def proc(*, program: ProgramId | None = MEMCACHED, uid: int = MEMCACHE, pid: int = 4000,
         ppid: int = 1, ns: int = NS) -> Process:
    return Process(pid=pid, start_time=100, ppid=ppid, uid=uid, user=str(uid),
                   exe="/usr/bin/memcached", cmdline=("/usr/bin/memcached", "-d"),
                   fds=(3,), pid_namespace=ns, program_id=program)


def holder(*procs: Process) -> Holder:
    return Holder(Socket(Proto.TCP, socket.AF_INET, "LISTEN", "127.0.0.1", 11211,
                         "0.0.0.0", 0, procs[0].uid, 9911), procs)


def context(**changes: Any) -> Context:
    return Context(unit=UNIT, service=SERVICE, unit_info=None, unit_uid=0,
                   protected_units=ALWAYS_PROTECTED, own_pids=frozenset({1, 70}),
                   own_pid_namespace=NS, unit_programs=(WRAPPER,),
                   profile=PROFILE)._replace(**changes)


def test_the_profiles_program_as_its_user_outside_any_unit_is_a_stray() -> None:
    found = classify_holder(context(), holder(proc()))
    assert found.kind is Kind.STRAY
    assert not found.untouchable
    assert "by the profile learned at 2025-12-08 02:13:20 UTC " \
           "(/usr/bin/memcached as memcache)" in found.reason


@pytest.mark.parametrize(("who", "why"), [
    (proc(uid=33), "nor its profile's (memcached as user memcache)"),
    (proc(program=OTHER), "nor its profile's"),
    (proc(program=None), "nor its profile's"),
])
def test_another_user_or_another_program_stays_foreign(who: Process, why: str) -> None:
    found = classify_holder(context(), holder(who))
    assert found.kind is Kind.FOREIGN
    assert why in found.reason


def test_a_container_or_another_pid_namespace_is_never_signalled_whatever_it_runs() -> None:
    found = classify_holder(context(), holder(proc(ns=NS + 1)))
    assert found.kind is Kind.STRAY  # what it runs matches ...
    assert "another pid namespace" in found.untouchable  # ... but it is never touched


def test_a_tree_is_judged_by_its_root_not_its_workers() -> None:
    root = proc(uid=0, pid=10)
    worker = proc(uid=MEMCACHE, pid=11, ppid=10)
    found = classify_holder(context(), holder(root, worker))
    assert found.kind is Kind.FOREIGN  # the profile's root runs as memcache, this one root


def test_without_a_profile_the_refusal_says_one_would_decide() -> None:
    ctx = context(profile=None, profile_note=profiles.NO_PROFILE)
    found = classify_holder(ctx, holder(proc()))
    assert found.kind is Kind.FOREIGN
    assert found.reason == ("not memcached.service's program; no profile yet: run the unit "
                            "once, or `portguard install` it while it runs")


def test_a_unit_holding_it_is_never_a_stray_by_profile() -> None:
    from portguard.model import Unit
    h = holder(proc())._replace(unit=Unit("other.service"))
    assert classify_holder(context(), h).kind is Kind.FOREIGN


file_ids = st.builds(FileId, st.integers(1, 4), st.integers(1, 50))
# only the shapes observe.procs.programs makes: an executable (a busybox applet), a
# script or jar under an interpreter, a module under an interpreter
programs_ = st.one_of(
    st.builds(lambda e, a: ProgramId(e, applet=a), file_ids, st.sampled_from(["", "httpd",
                                                                           "nc"])),
    st.builds(lambda e, t: ProgramId(e, target=t, interpreted=True), file_ids, file_ids),
    st.builds(lambda e, m: ProgramId(e, module=m, interpreted=True), file_ids,
              st.sampled_from(["http.server", "app", "web.main"])),
)


@given(learned=programs_, learned_uid=st.integers(0, 5), seen=programs_,
       seen_uid=st.integers(0, 5))
def test_a_profile_never_matches_another_user_or_another_file(
        learned: ProgramId, learned_uid: int, seen: ProgramId, seen_uid: int) -> None:
    profile = PROFILE._replace(program=learned, uid=learned_uid)
    ctx = context(profile=profile, unit_programs=())
    found = classify_holder(ctx, holder(proc(program=seen, uid=seen_uid)))
    if found.kind is Kind.STRAY:
        assert seen_uid == learned_uid
        assert seen.interpreted == learned.interpreted
        if seen.module or learned.module:  # a module: its name under the same interpreter
            assert (seen.module, seen.exe) == (learned.module, learned.exe)
        elif seen.interpreted:  # a script: the script file, whichever interpreter version
            assert seen.target == learned.target is not None
        else:  # an executable: the file (and the applet)
            assert (seen.exe, seen.applet) == (learned.exe, learned.applet)


# -- stored form and trust --------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    assert profiles.decode(profiles.encode(PROFILE), UNIT) == PROFILE


@pytest.mark.parametrize(("change", "why"), [
    ({"version": "0.0.1"}, f"learned by portguard 0.0.1, not {__version__}"),
    ({"unit": "redis.service"}, "it is redis.service's"),
    ({"uid": "x"}, "unreadable"),
])
def test_another_version_unit_or_garbage_is_unusable(change: dict[str, str],
                                                     why: str) -> None:
    import json
    doc = json.loads(profiles.encode(PROFILE)) | change
    with pytest.raises(profiles.Unusable, match=why):
        profiles.decode(json.dumps(doc).encode(), UNIT)


def _stored(tmp_path: Path, profile: Profile, mode: int = 0o600) -> str:
    path = profiles.path_for(profile.unit, str(tmp_path))
    Path(path).write_bytes(profiles.encode(profile))
    os.chmod(path, mode)
    return path


def _program_file(tmp_path: Path, name: str = "daemon") -> tuple[str, ProgramId]:
    """A root-owned program file, as a profile names one (under a root-only directory:
    tmp_path itself lies under the world-writable, sticky /tmp, which root_only allows)."""
    d = tmp_path / "bin"
    d.mkdir(mode=0o755, exist_ok=True)
    os.chmod(d, 0o755)
    path = d / name
    shutil.copy("/bin/true", path)
    os.chmod(path, 0o755)
    st_ = os.stat(path)
    return str(path), ProgramId(FileId(st_.st_dev, st_.st_ino))


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="stored profiles are root's")


@root_only
def test_a_stored_profile_is_loaded_while_its_file_is_the_same(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    path, program = _program_file(tmp_path)
    profile = PROFILE._replace(program=program, paths=(path,))
    _stored(tmp_path, profile)
    assert profiles.load(UNIT, str(tmp_path), check_dirs=False) == profile
    assert profiles.load("absent.service", str(tmp_path), check_dirs=False) is None


@root_only
def test_a_replaced_or_writable_program_file_makes_it_unusable(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    path, program = _program_file(tmp_path)
    _stored(tmp_path, PROFILE._replace(program=program, paths=(path,)))
    os.chmod(path, 0o757)
    with pytest.raises(profiles.Unusable, match="writable by group or others"):
        profiles.load(UNIT, str(tmp_path), check_dirs=False)
    os.chmod(path, 0o755)
    os.rename(path, path + ".old")
    shutil.copy("/bin/true", path)  # an upgrade: the same name, another file
    with pytest.raises(profiles.Unusable, match="was replaced since the profile was learned"):
        profiles.load(UNIT, str(tmp_path), check_dirs=False)


@root_only
def test_a_group_readable_or_symlinked_store_file_is_unusable(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o700)
    path, program = _program_file(tmp_path)
    stored = _stored(tmp_path, PROFILE._replace(program=program, paths=(path,)), 0o640)
    with pytest.raises(profiles.Unusable, match="not root's own file"):
        profiles.load(UNIT, str(tmp_path), check_dirs=False)
    os.rename(stored, stored + ".real")
    os.chmod(stored + ".real", 0o600)
    os.symlink(stored + ".real", stored)
    with pytest.raises(profiles.Unusable):
        profiles.load(UNIT, str(tmp_path), check_dirs=False)


@root_only
def test_a_store_under_a_directory_others_can_write_is_unusable(tmp_path: Path) -> None:
    path, program = _program_file(tmp_path)
    _stored(tmp_path, PROFILE._replace(program=program, paths=(path,)))
    # tmp_path lies under /tmp (writable by others): the directory check refuses it
    with pytest.raises(profiles.Unusable, match="not root's alone"):
        profiles.load(UNIT, str(tmp_path))


def test_a_unit_name_cannot_leave_the_store() -> None:
    for bad in ("../x.service", ".hidden", "a/b.service", ""):
        with pytest.raises(ValueError, match="not a unit name"):
            profiles.path_for(bad)


def test_config_keys_make_a_profile_and_win_over_the_learned_one(tmp_path: Path) -> None:
    profile, note = profiles.for_service(UNIT, "/bin/true", "root", 0, [WRAPPER],
                                         store=str(tmp_path))
    assert note == ""
    assert profile is not None and profile.source == "config" and profile.uid == 0
    assert profile.program.exe == FileId(os.stat("/bin/true").st_dev,
                                         os.stat("/bin/true").st_ino)
    none, why = profiles.for_service(UNIT, "", "", 0, [WRAPPER], store=str(tmp_path))
    assert none is None and why == profiles.NO_PROFILE
    bad, why = profiles.for_service(UNIT, "", "no-such-user-x", 0, [WRAPPER],
                                    store=str(tmp_path))
    assert bad is None and "cannot be resolved" in why


def test_config_rejects_a_relative_program_or_a_bad_user() -> None:
    from portguard.config.schema import ConfigError
    for key in ("program: bin/postgres", "program: '/usr/bin/*'", "user: 'a b'"):
        with pytest.raises(ConfigError):
            loads(f"services:\n  x.service:\n    ports: ['1']\n    {key}\n")
    svc = loads("services:\n  x.service:\n    ports: ['1']\n    program: /usr/bin/x\n"
                "    user: postgres\n").services[0]
    assert (svc.program, svc.user) == ("/usr/bin/x", "postgres")
