"""portguard.observe.procs.processes reading one process, its cgroup and its fds, and the cgroup2
tree, against a fake /proc and cgroup tree (fakeproc.py) built in tmp_path. The owner
search over many processes is test_processes_owners.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fakeproc import NOBODY, FakeProc, ListdirSpy, cg_id

from portguard.observe.procs import processes
from portguard.observe.procs.cgroupfs import CgroupTree, cgroup2_mount
from portguard.observe.procs.processes import ProcessGone

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
    assert cgroup2_mount(str(path)) == expected
