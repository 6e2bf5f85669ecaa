"""observe.procs.processes.find_owners: who holds each socket, searched in rings (suspects,
the socket's cgroup, its uid, then every process), against a fake /proc and cgroup tree
(fakeproc.py). ListdirSpy records which fd tables each search listed: the rings exist to
list as few as they can."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest
from fakeproc import NOBODY, FakeProc, ListdirSpy, cg_id, tcp

from portguard.model import Process
from portguard.observe.procs import processes
from portguard.observe.procs.cgroupfs import CgroupTree
from portguard.observe.procs.processes import ProcessGone

# --- find_owners: the rings -------------------------------------------------------------

def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown the fake /proc/PID directories")


def owners_pids(owners: processes.Owners, inode: int) -> list[int]:
    return [p.pid for p in owners.by_inode.get(inode, ())]


def add_cgroup_members(proc: FakeProc, holders: dict[int, dict[int, int]]) -> None:
    """The processes of the fake cgroup tree, with the sockets `holders` gives them."""
    where = {1: "/init.scope", 10: "/system.slice/x.service", 11: "/system.slice/x.service",
             12: "/system.slice/x.service/payload", 20: "/system.slice/y.service",
             30: "/user.slice/user-0.slice/session-1.scope",
             31: "/user.slice/user-0.slice/session-1.scope"}
    for pid, path in where.items():
        proc.add(pid, cgroup=f"0::{path}\n", sockets=holders.get(pid, {}))


def test_suspects_are_scanned_first_and_alone_when_they_hold_everything(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    add_cgroup_members(proc, {20: {3: 5001}})
    owners = processes.find_owners([tcp(5001)], suspects=[20], proc=str(proc.root),
                                   cgroups=CgroupTree(str(cgroups)))
    assert owners_pids(owners, 5001) == [20]
    assert spy.fd_tables() == [20]
    assert spy.proc_listings() == 0  # no pid was enumerated
    assert owners.full_scan is False


def test_cgroup_ring_lists_only_the_sockets_cgroup(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    # The socket was created in x.service; y.service's pid is a (wrong) suspect.
    add_cgroup_members(proc, {11: {3: 5002}})
    sock = tcp(5002, cgroup_id=cg_id(cgroups / "system.slice" / "x.service"))
    owners = processes.find_owners([sock], suspects=[20], proc=str(proc.root),
                                   cgroups=CgroupTree(str(cgroups)))
    assert owners_pids(owners, 5002) == [11]
    tables = spy.fd_tables()
    assert tables[0] == 20  # suspects first
    assert sorted(tables[1:]) == [10, 11, 12]  # then the cgroup and its sub-cgroups
    assert spy.proc_listings() == 0  # never every pid: 1, 30, 31 were not listed
    assert owners.full_scan is False


def test_prefork_workers_are_found_with_their_master(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    # x.service: master 10 and workers 11, 12 share one listening socket.
    add_cgroup_members(proc, {10: {3: 5003}, 11: {3: 5003}, 12: {3: 5003}})
    sock = tcp(5003, cgroup_id=cg_id(cgroups / "system.slice" / "x.service"))
    owners = processes.find_owners([sock], proc=str(proc.root),
                                   cgroups=CgroupTree(str(cgroups)))
    assert owners_pids(owners, 5003) == [10, 11, 12]
    assert [p.fds for p in owners.by_inode[5003]] == [(3,), (3,), (3,)]


def test_a_suspect_master_does_not_hide_its_workers(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    # Preflight suspects the unit's main pid. The workers share the socket: a stop that
    # signals only the master leaves the port held, so they must be reported too. The
    # module docstring promises ring 2 finds them.
    add_cgroup_members(proc, {10: {3: 5004}, 11: {3: 5004}, 12: {3: 5004}})
    sock = tcp(5004, cgroup_id=cg_id(cgroups / "system.slice" / "x.service"))
    owners = processes.find_owners([sock], suspects=[10], proc=str(proc.root),
                                   cgroups=CgroupTree(str(cgroups)))
    assert owners_pids(owners, 5004) == [10, 11, 12]
    assert spy.proc_listings() == 0


def test_uid_ring_before_the_full_scan(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    needs_root()
    add_cgroup_members(proc, {})
    proc.add(40, uid=NOBODY, owner=NOBODY, sockets={3: 5005}, cgroup="0::/\n")
    proc.add(41, uid=NOBODY, owner=NOBODY, cgroup="0::/\n")
    sock = tcp(5005, uid=NOBODY)  # read from /proc/net: no cgroup id
    owners = processes.find_owners([sock], proc=str(proc.root),
                                   cgroups=CgroupTree(str(cgroups)))
    assert owners_pids(owners, 5005) == [40]
    assert sorted(spy.fd_tables()) == [40, 41]  # nobody's processes only
    assert owners.full_scan is False
    assert owners.by_inode[5005][0].user == "nobody"


def test_rings_in_order_and_the_full_scan_last(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    # A socket created by a root process in x.service, handed (SCM_RIGHTS) to a process
    # in a session, and owned by nobody: only the last ring finds its holder.
    needs_root()
    add_cgroup_members(proc, {31: {3: 5006}})
    proc.add(41, uid=NOBODY, owner=NOBODY, cgroup="0::/\n")  # nobody's, not a holder
    sock = tcp(5006, uid=NOBODY, cgroup_id=cg_id(cgroups / "system.slice" / "x.service"))
    owners = processes.find_owners([sock], suspects=[20], proc=str(proc.root),
                                   cgroups=CgroupTree(str(cgroups)))
    assert owners_pids(owners, 5006) == [31]
    assert owners.full_scan is True
    tables = spy.fd_tables()
    assert tables[0] == 20  # suspects
    assert sorted(tables[1:4]) == [10, 11, 12]  # the socket's cgroup
    assert tables[4] == 41  # the socket's uid
    assert sorted(tables[5:]) == [1, 30, 31]  # everything else, each read once


def test_socket_activation_reports_systemd_and_the_activated_service(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    # x.socket's listener: created in x.socket's (empty) cgroup by PID 1, which keeps it
    # and passes it to x.service, running as nobody. `ss -p` lists both holders.
    needs_root()
    add_cgroup_members(proc, {1: {29: 5007}})
    proc.add(50, uid=NOBODY, owner=NOBODY, cgroup="0::/system.slice/x.service\n",
             sockets={3: 5007})
    sock = tcp(5007, uid=0, cgroup_id=cg_id(cgroups / "system.slice" / "x.socket"))
    owners = processes.find_owners([sock], proc=str(proc.root),
                                   cgroups=CgroupTree(str(cgroups)))
    assert owners_pids(owners, 5007) == [1, 50]


def test_unreadable_fd_tables_are_counted(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    add_cgroup_members(proc, {20: {3: 5008}})
    spy.deny.update({20, 30})
    owners = processes.find_owners([tcp(5008)], proc=str(proc.root),
                                   cgroups=CgroupTree(str(cgroups)))
    assert owners.by_inode.get(5008) is None
    assert owners.unreadable == 2
    assert owners.full_scan is True


def test_sockets_without_an_inode_are_not_searched(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    add_cgroup_members(proc, {})
    owners = processes.find_owners([tcp(0, state="TIME_WAIT")], proc=str(proc.root),
                                   cgroups=CgroupTree(str(cgroups)))
    assert dict(owners.by_inode) == {}
    assert spy.listed == []
    assert owners.full_scan is False


def test_a_holder_that_exits_during_the_search_is_left_out(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    add_cgroup_members(proc, {10: {3: 5009}, 11: {3: 5009}})

    def reader(pid: int, fds: Sequence[int]) -> Process:
        if pid == 10:
            raise ProcessGone(pid)
        return processes.read_process(pid, fds, str(proc.root))

    sock = tcp(5009, cgroup_id=cg_id(cgroups / "system.slice" / "x.service"))
    owners = processes.find_owners([sock], proc=str(proc.root), reader=reader,
                                   cgroups=CgroupTree(str(cgroups)))
    assert owners_pids(owners, 5009) == [11]


def test_one_search_serves_many_sockets(
        proc: FakeProc, cgroups: Path, spy: ListdirSpy) -> None:
    add_cgroup_members(proc, {10: {3: 6001, 4: 6002}, 20: {5: 6003}})
    x = cg_id(cgroups / "system.slice" / "x.service")
    y = cg_id(cgroups / "system.slice" / "y.service")
    owners = processes.find_owners(
        [tcp(6001, 80, cgroup_id=x), tcp(6002, 443, cgroup_id=x), tcp(6003, 25, cgroup_id=y)],
        proc=str(proc.root), cgroups=CgroupTree(str(cgroups)))
    assert (owners_pids(owners, 6001), owners_pids(owners, 6002), owners_pids(owners, 6003)) \
        == ([10], [10], [20])
    assert sorted(spy.fd_tables()) == [10, 11, 12, 20]


def test_the_owner_search_is_bounded_in_fds_read_and_in_time(
        proc: FakeProc, cgroups: Path) -> None:
    """Any user can fill fd tables (a process may hold ~1M fds, and fork): the search
    stops at its bounds, and what it did not reach stays unknown (docs/security.md)."""
    flood = {fd: 900000 + fd for fd in range(3, 3000)}  # a user's process full of sockets
    proc.add(40, cgroup="0::/user.slice/user-1000.slice/session-2.scope\n", sockets=flood)
    proc.add(50, cgroup="0::/system.slice/web.service\n", sockets={3: 5010})
    tree = CgroupTree(str(cgroups))
    whole = processes.find_owners([tcp(5010)], proc=str(proc.root), cgroups=tree)
    assert owners_pids(whole, 5010) == [50] and not whole.cut
    # the flood is read first (a suspect): the budget is gone before the holder is seen
    cut = processes.find_owners([tcp(5010)], suspects=[40], proc=str(proc.root),
                                cgroups=tree, max_fds=1000)
    assert cut.cut and cut.by_inode.get(5010) is None  # unknown, never guessed
    late = processes.find_owners([tcp(5010)], proc=str(proc.root), cgroups=tree,
                                 seconds=0)
    assert late.cut and late.by_inode.get(5010) is None
