"""portguard.processes against a fake /proc (and a fake cgroup2 tree) built in tmp_path.

The fake /proc has what the kernel's has for each pid: `stat` (with the real field
layout, neighbours of the fields we read given distinct values so an off-by-one shows),
`status`, `cmdline` (NUL-separated), `cgroup`, `exe` and `fd/N` symlinks such as
`socket:[12345]`, and `ns/pid`.

Reading another user's /proc/PID/fd needs CAP_SYS_PTRACE; root (which runs these tests
here) bypasses file modes, so "unreadable" is simulated at os.listdir, the call that
fails for real. The same wrapper records which fd tables were listed: that is how the
owner search's rings are checked, against the cost they exist to avoid.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from portguard import processes
from portguard.model import Process, Proto, Socket
from portguard.processes import CgroupTree, ProcessGone

NOBODY = 65534


class FakeProc:
    """A /proc directory with the files portguard reads, one fake process at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(exist_ok=True)

    def add(self, pid: int, *, comm: str = "python3", ppid: int = 1, start: int = 5000,
            uid: int = 0, ruid: int | None = None, cmdline: Sequence[str] = ("python3",),
            cgroup: str = "0::/system.slice/x.service\n", exe: str = "/usr/bin/python3",
            sockets: dict[int, int] | None = None, owner: int | None = None) -> Path:
        """`sockets` maps fd -> socket inode; `owner` chowns /proc/PID (needs root)."""
        d = self.root / str(pid)
        d.mkdir()
        self.write_stat(pid, comm=comm, ppid=ppid, start=start)
        r = uid if ruid is None else ruid
        (d / "status").write_text(
            f"Name:\t{comm}\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t{pid}\nPid:\t{pid}\n"
            f"PPid:\t{ppid}\nUid:\t{r}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n")
        (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in cmdline))
        (d / "cgroup").write_text(cgroup)
        os.symlink(exe, d / "exe")
        (d / "ns").mkdir()
        (d / "ns" / "pid").write_text("")
        (d / "fd").mkdir()
        os.symlink("/dev/null", d / "fd" / "0")
        os.symlink("pipe:[777]", d / "fd" / "1")
        for fd, inode in (sockets or {}).items():
            os.symlink(f"socket:[{inode}]", d / "fd" / str(fd))
        if owner is not None:
            os.chown(d, owner, -1)
        return d

    def write_stat(self, pid: int, *, comm: str, ppid: int, start: int) -> None:
        # Fields 1-52 as proc(5) numbers them; field N's value is N*1000 unless it is
        # one we read (4 ppid, 22 starttime), so reading a neighbour gives a wrong answer.
        rest = [str(ppid if n == 4 else start if n == 22 else n * 1000) for n in range(4, 53)]
        (self.root / str(pid) / "stat").write_text(f"{pid} ({comm}) S {' '.join(rest)}\n")


class ListdirSpy:
    """Records every os.listdir under the fake /proc; refuses the fd dirs in `deny`."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.listed: list[str] = []
        self.deny: set[int] = set()

    def fd_tables(self) -> list[int]:
        """pids whose /proc/PID/fd was listed, in order."""
        return [int(p.split("/")[-2]) for p in self.listed if p.endswith("/fd")]

    def proc_listings(self) -> int:
        """How often /proc itself was listed (every pid enumerated)."""
        return sum(1 for p in self.listed if p == self.root)


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


@pytest.fixture
def spy(proc: FakeProc, monkeypatch: pytest.MonkeyPatch) -> Iterator[ListdirSpy]:
    recorder = ListdirSpy(proc.root)
    real = os.listdir

    def listdir(path: str | os.PathLike[str] = ".") -> list[str]:
        text = os.fspath(path)
        if text.startswith(recorder.root):
            recorder.listed.append(text)
            if text.endswith("/fd") and int(text.split("/")[-2]) in recorder.deny:
                raise PermissionError(13, "Permission denied", text)
        return real(path)

    monkeypatch.setattr(os, "listdir", listdir)
    yield recorder


def tcp(inode: int, port: int = 8080, *, uid: int = 0, cgroup_id: int | None = None,
        state: str = "LISTEN") -> Socket:
    return Socket(Proto.TCP, int(socket.AF_INET), state, "0.0.0.0", port, "0.0.0.0", 0, uid,
                  inode, None, cgroup_id)


# --- start_time / read_process ------------------------------------------------------

def test_start_time_is_stat_field_22(proc: FakeProc) -> None:
    proc.add(42, start=987654)
    assert processes.start_time(42, str(proc.root)) == 987654


def test_start_time_survives_a_comm_with_parenthesis_and_spaces(proc: FakeProc) -> None:
    # A process may name itself anything (prctl PR_SET_NAME): "x) S 9 (y" would fool a
    # parser that splits at the first ')'.
    proc.add(43, comm="x) S 9 (y", ppid=77, start=123456)
    assert processes.start_time(43, str(proc.root)) == 123456
    assert processes.read_process(43, proc=str(proc.root)).ppid == 77


def test_start_time_of_a_missing_process_raises_process_gone(proc: FakeProc) -> None:
    with pytest.raises(ProcessGone):
        processes.start_time(4242, str(proc.root))


def test_read_process_reads_everything_who_shows(proc: FakeProc) -> None:
    d = proc.add(50, comm="webd", ppid=7, start=31337, uid=NOBODY, ruid=1000,
                 cmdline=("/usr/bin/python3", "/srv/web.py", "--port", "8080", "a b"),
                 cgroup="0::/system.slice/system-web.slice/web@blue.service\n",
                 exe="/usr/bin/python3.11")
    p = processes.read_process(50, fds=[3, 7], proc=str(proc.root))
    assert p.pid == 50
    assert p.start_time == 31337
    assert p.ppid == 7
    assert p.uid == NOBODY  # the effective uid, as ps shows, not the real one (1000)
    assert p.user == "nobody"
    assert p.exe == "/usr/bin/python3.11"
    assert p.cmdline == ("/usr/bin/python3", "/srv/web.py", "--port", "8080", "a b")
    assert p.cgroup == "/system.slice/system-web.slice/web@blue.service"
    assert p.fds == (3, 7)
    assert p.pid_namespace == os.stat(d / "ns" / "pid").st_ino


def test_read_process_names_an_unknown_uid_by_number(proc: FakeProc) -> None:
    proc.add(51, uid=4000123)
    assert processes.read_process(51, proc=str(proc.root)).user == "4000123"


def test_read_process_of_a_kernel_thread_has_no_exe_or_cmdline(proc: FakeProc) -> None:
    d = proc.add(2, comm="kthreadd", cmdline=(), cgroup="0::/\n")
    os.unlink(d / "exe")  # readlink fails for kernel threads
    p = processes.read_process(2, proc=str(proc.root))
    assert (p.exe, p.cmdline, p.cgroup) == ("", (), "/")


def test_read_process_of_a_missing_process_raises_process_gone(proc: FakeProc) -> None:
    with pytest.raises(ProcessGone):
        processes.read_process(4242, proc=str(proc.root))


def test_read_process_refuses_a_pid_reused_while_it_was_read(
        proc: FakeProc, monkeypatch: pytest.MonkeyPatch) -> None:
    # The process exits and its pid is reused between reading stat and the later files:
    # the facts would mix two processes, so the read is refused.
    proc.add(60, start=1000)
    real = processes.cgroup_of

    def cgroup_of_after_reuse(pid: int, root: str = processes.PROC) -> str:
        proc.write_stat(60, comm="other", ppid=1, start=2000)
        return real(pid, root)

    monkeypatch.setattr(processes, "cgroup_of", cgroup_of_after_reuse)
    with pytest.raises(ProcessGone):
        processes.read_process(60, proc=str(proc.root))


# --- cgroup_of ------------------------------------------------------------------------

V1_LINES = ("12:pids:/system.slice/x.service\n11:memory:/system.slice/x.service\n"
            "2:cpu,cpuacct:/system.slice/x.service\n")


@pytest.mark.parametrize(("text", "expected"), [
    pytest.param("0::/system.slice/x.service\n", "/system.slice/x.service", id="v2"),
    pytest.param(V1_LINES + "1:name=systemd:/system.slice/web@a.service\n"
                 "0::/system.slice/web@a.service\n", "/system.slice/web@a.service",
                 id="hybrid"),
    pytest.param(V1_LINES + "1:name=systemd:/user.slice/user-1000.slice/session-3.scope\n"
                 "0::/\n", "/user.slice/user-1000.slice/session-3.scope",
                 id="hybrid-unified-at-root"),
    pytest.param(V1_LINES + "1:name=systemd:/system.slice/x.service\n",
                 "/system.slice/x.service", id="v1-only"),
    pytest.param("0::/\n", "/", id="v2-root"),
    pytest.param("", "", id="empty"),
])
def test_cgroup_of(proc: FakeProc, text: str, expected: str) -> None:
    proc.add(70, cgroup=text)
    assert processes.cgroup_of(70, str(proc.root)) == expected


def test_cgroup_of_a_missing_process_is_empty(proc: FakeProc) -> None:
    assert processes.cgroup_of(4242, str(proc.root)) == ""


# --- socket_fds -----------------------------------------------------------------------

def test_socket_fds_lists_only_wanted_socket_inodes(proc: FakeProc) -> None:
    proc.add(80, sockets={3: 1111, 4: 2222, 9: 1111, 5: 3333})
    found = processes.socket_fds(80, {1111, 3333, 4444}, str(proc.root))
    assert {inode: sorted(fds) for inode, fds in found.items()} == {1111: [3, 9], 3333: [5]}


def test_socket_fds_of_a_missing_process_is_empty(proc: FakeProc) -> None:
    assert processes.socket_fds(4242, {1111}, str(proc.root)) == {}


def test_socket_fds_raises_permission_error_when_the_fd_table_is_unreadable(
        proc: FakeProc, spy: ListdirSpy) -> None:
    proc.add(81, sockets={3: 1111})
    spy.deny.add(81)
    with pytest.raises(PermissionError):
        processes.socket_fds(81, {1111}, str(proc.root))


# --- CgroupTree -------------------------------------------------------------------------

@pytest.fixture
def cgroups(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup"
    layout = {
        "": "1\n",
        "init.scope": "1\n",
        "system.slice": "",
        "system.slice/x.service": "10\n11\n",
        "system.slice/x.service/payload": "12\n",
        "system.slice/x.socket": "",
        "system.slice/y.service": "20\n",
        "user.slice/user-0.slice/session-1.scope": "30\n31\n",
    }
    for rel, procs in layout.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text(procs)
        (d / "cgroup.controllers").write_text("")
    return root


def cg_id(path: Path) -> int:
    return os.stat(path).st_ino  # what sock_diag reports as the socket's cgroup id


def test_cgroup_tree_finds_a_cgroup_by_its_inode(cgroups: Path) -> None:
    tree = CgroupTree(str(cgroups))
    target = cgroups / "system.slice" / "y.service"
    assert tree.path_of(cg_id(target)) == str(target)
    assert tree.path_of(cg_id(cgroups)) == str(cgroups)


def test_cgroup_tree_members_include_sub_cgroups(cgroups: Path) -> None:
    tree = CgroupTree(str(cgroups))
    assert sorted(tree.pids(cg_id(cgroups / "system.slice" / "x.service"))) == [10, 11, 12]
    assert tree.pids(cg_id(cgroups / "system.slice" / "x.socket")) == []


def test_cgroup_tree_unknown_id_has_no_members(cgroups: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "not-a-cgroup"
    elsewhere.mkdir()
    tree = CgroupTree(str(cgroups))
    assert tree.path_of(cg_id(elsewhere)) is None
    assert tree.pids(cg_id(elsewhere)) == []


def test_cgroup_tree_without_a_cgroup2_mount_knows_nothing(cgroups: Path) -> None:
    assert CgroupTree("").pids(cg_id(cgroups)) == []


@pytest.mark.parametrize(("mountinfo", "expected"), [
    ("24 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
     "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate\n",
     "/sys/fs/cgroup"),
    ("24 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
     "35 24 0:30 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
     "36 35 0:31 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
     "37 35 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n",
     "/sys/fs/cgroup/unified"),
    ("24 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
     "37 24 0:32 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n", ""),
], ids=["unified", "hybrid", "v1-only"])
def test_cgroup2_mount(tmp_path: Path, mountinfo: str, expected: str) -> None:
    path = tmp_path / "mountinfo"
    path.write_text(mountinfo)
    assert processes.cgroup2_mount(str(path)) == expected


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
