"""Classify each holder of a declared port: self, twin, stray, foreign or lingering.

Pure functions of observed facts (the contract (docs/), "Why a port is taken"): given the service
being started, what systemd says about its unit and twins, and the holders observed on
its ports, decide what each holder is and whether it may ever be touched. No I/O here:
everything arrives in a `Context` and leaves as `Conflict`s, so every rule is tested
without root.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from portguard.config.schema import Service
from portguard.model import (
    LINGERING_STATES,
    Container,
    Holder,
    Process,
    Profile,
    ProgramId,
    Proto,
    Unit,
)
from portguard.observe.systemd.activation import activated_by_note, held_for


class Kind(enum.StrEnum):
    SELF = "self"  # a remnant of this unit's previous run, in its own cgroup
    TWIN = "twin"  # another instance of the template, or a configured duplicate unit
    STRAY = "stray"  # a copy of the program outside any service unit
    FOREIGN = "foreign"  # anything else: never stopped or signalled
    LINGERING = "lingering"  # TIME_WAIT & co.: no live process holds it


class Context(NamedTuple):
    """Everything classification needs to know about the service being started."""

    unit: str  # the unit being started, e.g. web@green.service
    service: Service
    unit_info: Unit | None  # what systemd says about `unit` (None: D-Bus not consulted)
    unit_uid: int | None  # uid of the unit's User= (None: unknown; 0 when unset)
    protected_units: Sequence[str]  # globs from the config, plus the always-protected
    own_pids: frozenset[int]  # portguard itself and its ancestors
    own_pid_namespace: int  # inode of our pid namespace; 0 when unknown
    claiming_twins: tuple[Unit, ...] = ()  # twin units active/activating, maybe not bound
    unit_programs: tuple[ProgramId, ...] = ()  # what its ExecStart= lines run (identity)
    profile: Profile | None = None  # what the unit really runs (learned, or config keys)
    profile_note: str = ""  # without a usable profile: why, for the refusal


class Conflict(NamedTuple):
    """One reason a declared port is not free, with what may be done about it."""

    port: int
    proto: Proto
    kind: Kind
    reason: str  # for people: why this kind
    holder: Holder | None  # None for a twin that claims the port before binding it
    unit: str | None  # the holder's unit, if any
    processes: tuple[Process, ...]  # the live processes holding it
    untouchable: str  # non-empty: why it must never be stopped or signalled

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self.processes)

    @property
    def container(self) -> Container | None:
        """The container holding the port, itself or through its runtime's helper."""
        return self.holder.container if self.holder is not None else None


def is_outside_service(unit: Unit | None) -> bool:
    """Processes in no unit, a login session or a user manager are "outside any service":
    where hand-started copies live (a shell, tmux, a deploy script over ssh)."""
    if unit is None:
        return True
    return unit.id.endswith(".scope") or fnmatch.fnmatchcase(unit.id, "user@*.service")


def _glob_any(name: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, g) for g in globs)


def same_program(a: ProgramId, b: ProgramId) -> bool:
    """The same program by file identity (the contract (docs/), case 3): the same executable file
    (and applet, for busybox); for interpreters the same script or jar file, or the same
    module under the same interpreter. Arguments and process titles never count."""
    if a.interpreted or b.interpreted:
        if not (a.interpreted and b.interpreted):
            return False
        if a.module or b.module:
            return a.module == b.module and a.exe == b.exe
        return a.target is not None and a.target == b.target
    return a.exe == b.exe and a.applet == b.applet


def matches_command(proc: Process, programs: Sequence[ProgramId],
                    command_globs: Sequence[str]) -> bool:
    """Whether the process runs this service's program: one of its ExecStart= lines'
    (`programs`, by file identity), or a configured glob on its exe or command line."""
    if proc.program_id is not None and any(same_program(proc.program_id, p)
                                           for p in programs):
        return True
    joined = " ".join(proc.cmdline)
    return any(fnmatch.fnmatchcase(proc.exe, g) or fnmatch.fnmatchcase(joined, g)
               for g in command_globs)


def tree_order(procs: Sequence[Process]) -> tuple[list[Process], tuple[Process, ...]]:
    """The roots of the process tree holding a socket (a holder whose parent is not one),
    and all of it with the roots first: a master and its workers are judged by the master
    (its user, program, unit) and signalled master first, its workers going with it."""
    pids = {p.pid for p in procs}
    roots = [p for p in procs if p.ppid not in pids] or list(procs)
    return roots, (*roots, *(p for p in procs if p not in roots))


def forking_master(holder: Holder, roots: Sequence[Process]) -> Process | None:
    """The master a tree is judged by when it holds none of the socket itself (haproxy
    -W: only the worker, as user haproxy, listens; its root master forked it): the
    holder's `master` when it runs the same program as every root. The roots are still
    what is signalled (their socket checked again); such a master exits with them."""
    master = holder.master
    if master is None or master.program_id is None or not roots or any(
            p.program_id is None or not same_program(master.program_id, p.program_id)
            for p in roots):
        return None
    return master


def untouchable_reason(ctx: Context, unit: Unit | None,
                       procs: Sequence[Process]) -> str:
    """Why these processes may never be signalled or their unit stopped ("" if they may)."""
    for proc in procs:
        if proc.pid == 1:
            return "PID 1 (systemd) holds it"
        if proc.pid in ctx.own_pids:
            return f"pid {proc.pid} is portguard itself or its parent"
        if ctx.own_pid_namespace and proc.pid_namespace and \
                proc.pid_namespace != ctx.own_pid_namespace:
            return f"pid {proc.pid} runs in another pid namespace (a container)"
    if unit is not None and _glob_any(unit.id, ctx.protected_units):
        return f"{unit.id} is protected by the config"
    return ""


def classify_holder(ctx: Context, holder: Holder) -> Conflict:
    sock = holder.socket
    unit = holder.unit
    roots, procs = tree_order(holder.processes)
    unit_id = unit.id if unit else None

    def conflict(kind: Kind, reason: str) -> Conflict:
        untouchable = untouchable_reason(ctx, unit, procs) if procs else ""
        return Conflict(sock.local_port, sock.proto, kind, reason, holder, unit_id, procs,
                        untouchable)

    if holder.container is not None:
        # Before self/twin/stray: a container (or the conmon serving it) stays foreign even
        # in the unit's own cgroup or a unit listed as a duplicate, and is never signalled:
        # only its runtime stops it cleanly.
        c = holder.container
        what = (f"{c.via} for" if c.via else f"{procs[0].program} in") if procs else \
            "published by the kernel (DNAT) for"
        found = conflict(Kind.FOREIGN, f"{what} {c.runtime} container {c.label}: a "
                         "container, never a duplicate, whatever it runs")
        return found._replace(untouchable=f"{c} is a container: only its runtime stops it")
    if not procs:
        if holder.unknown_reason:
            return conflict(Kind.FOREIGN, f"{holder.unknown_reason}: it cannot be told apart "
                            "from another service, so it is never touched")
        if sock.state in LINGERING_STATES:
            return conflict(Kind.LINGERING, "left by a closed connection; expires on its own")
        return conflict(Kind.FOREIGN, "held by no process portguard can see")

    svc = ctx.service
    if unit_id is not None and unit_id == ctx.unit:
        return conflict(Kind.SELF, "left over from the unit's previous run (in its own "
                        "cgroup)")
    if unit_id is not None and svc.is_template and svc.matches(unit_id):
        return conflict(Kind.TWIN, f"another instance of {svc.name}")
    if unit_id is not None and _glob_any(unit_id, svc.duplicates.units):
        return conflict(Kind.TWIN, f"configured as a duplicate of {svc.name}")
    if not is_outside_service(unit):
        return conflict(Kind.FOREIGN, f"not {svc.name}'s program")
    master = forking_master(holder, roots)
    judged = [master] if master is not None else roots
    where = f"in {unit_id}" if unit_id else "outside any unit"
    forked = (f" (forked by its master, pid {master.pid}, user "
              f"{master.user or master.uid})" if master is not None else "")
    why_not = f"not {svc.name}'s program"
    if all(matches_command(p, ctx.unit_programs, svc.duplicates.commands) for p in roots):
        other = [p for p in judged if ctx.unit_uid is None or p.uid != ctx.unit_uid]
        if not other:
            return conflict(Kind.STRAY, f"a copy of {svc.name}'s program started "
                            f"{where}{forked}")
        # Never a stray when it runs as someone else (or when the unit's user cannot
        # be resolved, so nobody can say it does not), unless the profile says the
        # service runs as that user. Its workers' users do not count: they go with
        # their master.
        why_not = (f"runs the service's program but as user "
                   f"{other[0].user or other[0].uid}, not the unit's user")
    if ctx.profile is not None:
        if matches_profile(ctx.profile, judged):
            return conflict(Kind.STRAY, f"a copy of {svc.name}'s program started {where}"
                            f"{forked}, by {profile_text(ctx.profile)}")
        return conflict(Kind.FOREIGN, f"{why_not}, nor its profile's "
                        f"({ctx.profile.name} as user {ctx.profile.user or ctx.profile.uid})")
    return conflict(Kind.FOREIGN, why_not + (f"; {ctx.profile_note}" if ctx.profile_note
                                             else ""))


def matches_profile(profile: Profile, judged: Sequence[Process]) -> bool:
    """Whether a tree judged by `judged` (its root, or the master that forked it) runs
    the profile's program (by file identity) as the profile's user: both, never one."""
    return bool(judged) and all(
        p.program_id is not None and same_program(p.program_id, profile.program)
        and p.uid == profile.uid for p in judged)


def profile_text(profile: Profile) -> str:
    """Which profile decided, for the journal: `the profile learned at 2026-12-08 02:51
    UTC (/usr/bin/memcached as memcache)`, or the config's keys."""
    if profile.source == "config":
        return f"the config's program/user ({profile})"
    import time
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(profile.seen))
    return f"the profile learned at {when} ({profile})"


def claimed_by_twins(ctx: Context, ports: Iterable[tuple[int, Proto]],
                     holders_units: Iterable[str]) -> list[Conflict]:
    """Twins that are active or activating but hold none of the ports yet.

    Two instances starting together must not both pass: the one that claims the port
    first (its unit is activating) counts as a twin holder already.
    """
    seen = set(holders_units)
    out = []
    for twin in ctx.claiming_twins:
        if twin.id == ctx.unit or twin.id in seen:
            continue
        if twin.active_state not in ("active", "activating", "reloading"):
            continue
        untouchable = (f"{twin.id} is protected by the config"
                       if _glob_any(twin.id, ctx.protected_units) else "")
        for port, proto in ports:
            out.append(Conflict(port, proto, Kind.TWIN,
                                f"{twin.id} ({twin.active_state}) declares the same port",
                                None, twin.id, (), untouchable))
            break  # one record per twin: stopping it frees all its ports
    return out


def own_activation(ctx: Context, holder: Holder) -> bool:
    """The unit's own activation socket (docs/commands.md: socket activation): PID 1
    holds it for a .socket unit that activates this very unit. Never a conflict: the unit
    is started to serve it."""
    return held_for(holder.unit, ctx.unit)


def _socket_unit_holder(ctx: Context, holder: Holder) -> Conflict:
    """A listener PID 1 holds for another service's socket unit: foreign, and named so."""
    found = classify_holder(ctx, holder)
    unit = holder.unit
    if found.kind is Kind.FOREIGN and unit is not None and unit.id.endswith(".socket"):
        return found._replace(reason="the listening socket of another service's socket "
                              f"unit, {activated_by_note(unit)}")
    return found


def classify(ctx: Context, holders: Iterable[Holder]) -> list[Conflict]:
    """Every holder's conflict, plus twins claiming the ports before binding them. The
    unit's own activation sockets are none (see `own_activation`)."""
    conflicts = [_socket_unit_holder(ctx, h) for h in holders if not own_activation(ctx, h)]
    ports = [(c.port, c.proto) for c in conflicts] or [
        (spec.first, spec.proto) for spec in ctx.service.ports]
    units = [c.unit for c in conflicts if c.unit]
    return conflicts + claimed_by_twins(ctx, ports, units)
