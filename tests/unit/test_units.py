"""observe.systemd.units (and observe.procs.cgroups, where its pure part moved) without a bus:
what cgroup paths and argv say, D-Bus error names, and replies from a fake bus.

The cgroup paths are the ones systemd and the container runtimes create (systemd's
`cg_path_get_unit` is the reference for which unit a path belongs to: skip the slices,
the next component is the unit; it is also what the manager's GetUnitByPID answers,
since it walks a process's cgroup up to the first cgroup a unit owns). Error objects are
made by pystemd's own factory, `pystemd.dbusexc.DBusError`, with the errno libsystemd
passes it, exactly as `call_method` raises them.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest
from pystemd.dbusexc import DBusError

from portguard.errors import ExitStatus, NotPermittedError
from portguard.model import Unit
from portguard.observe.procs import cgroups
from portguard.observe.procs.cgroups import (
    container_from_cgroup,
    docker_proxy_target,
    unit_from_cgroup,
)
from portguard.observe.systemd import units
from portguard.observe.systemd.dbus_errors import SystemdError, SystemdUnavailable, dbus_error_name
from portguard.observe.systemd.units import Systemd

DOCKER_ID = "3f2a9c1b2d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"


# --- unit_from_cgroup -----------------------------------------------------------------

@pytest.mark.parametrize(("path", "unit"), [
    ("/system.slice/x.service", "x.service"),
    ("/system.slice/system-web.slice/web@blue.service", "web@blue.service"),
    ("/system.slice/x.service/payload", "x.service"),  # a delegated sub-cgroup
    ("/init.scope", "init.scope"),
    ("/system.slice/x.socket", "x.socket"),
    ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
    ("/system.slice/docker-" + DOCKER_ID + ".scope", "docker-" + DOCKER_ID + ".scope"),
    ("/machine.slice/libpod-" + DOCKER_ID[:64] + ".scope/container",
     "libpod-" + DOCKER_ID + ".scope"),
    ("/system.slice/x.service/", "x.service"),
])
def test_unit_from_cgroup(path: str, unit: str) -> None:
    assert unit_from_cgroup(path) == unit


@pytest.mark.parametrize("path", [
    "/", "", "/system.slice", "/user.slice/user-1000.slice",
    "/docker/" + DOCKER_ID,  # cgroupfs driver: no unit at all
    "/kubepods/burstable/pod1234/" + DOCKER_ID,
])
def test_no_unit_from_cgroup(path: str) -> None:
    assert unit_from_cgroup(path) is None


@pytest.mark.parametrize(("path", "unit"), [
    # A user's own `systemctl --user` service: on the system bus, GetUnitByPID names the
    # user manager's unit. Naming the inner unit would pass a user's `web@x.service`
    # off as the system's web@x.service (status would call it the service's own).
    ("/user.slice/user-1000.slice/user@1000.service/app.slice/web@x.service",
     "user@1000.service"),
    # A container's own systemd under systemd-nspawn: the host unit is the container's.
    ("/machine.slice/systemd-nspawn@box.service/payload/system.slice/nginx.service",
     "systemd-nspawn@box.service"),
    # A service with Delegate=yes that made sub-cgroups named like units.
    ("/system.slice/d.service/inner.service", "d.service"),
])
def test_unit_from_cgroup_names_the_unit_systemd_names(path: str, unit: str) -> None:
    # Without D-Bus portguard falls back to this function; it must agree with what
    # GetUnitByPID says when D-Bus is up, or the same process changes unit with the bus.
    assert unit_from_cgroup(path) == unit


def test_unit_from_path_only_marks_the_unit_as_not_from_dbus() -> None:
    unit = cgroups.unit_from_path_only("/system.slice/system-web.slice/web@a.service")
    assert unit == Unit(id="web@a.service",
                        control_group="/system.slice/system-web.slice/web@a.service",
                        from_dbus=False)
    assert cgroups.unit_from_path_only("/") is None


# --- container_from_cgroup -------------------------------------------------------------

@pytest.mark.parametrize(("path", "container"), [
    pytest.param("/system.slice/docker-" + DOCKER_ID + ".scope", "docker:3f2a9c1b2d4e",
                 id="docker-systemd-driver"),
    pytest.param("/docker/" + DOCKER_ID, "docker:3f2a9c1b2d4e", id="docker-cgroupfs"),
    pytest.param("/docker/" + DOCKER_ID + "/sub", "docker:3f2a9c1b2d4e",
                 id="docker-cgroupfs-sub"),
    pytest.param("/machine.slice/libpod-" + DOCKER_ID + ".scope", "podman:3f2a9c1b2d4e",
                 id="podman"),
    pytest.param("/machine.slice/libpod-" + DOCKER_ID + ".scope/container",
                 "podman:3f2a9c1b2d4e", id="podman-container-subgroup"),
    pytest.param("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-"
                 + DOCKER_ID + ".scope/container", "podman:3f2a9c1b2d4e",
                 id="podman-rootless"),
    pytest.param("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12ab.slice"
                 "/cri-containerd-" + DOCKER_ID + ".scope", "containerd:3f2a9c1b2d4e",
                 id="containerd-cri"),
    pytest.param("/kubepods.slice/kubepods-pod12ab.slice/crio-" + DOCKER_ID + ".scope",
                 "cri-o:3f2a9c1b2d4e", id="cri-o"),
    pytest.param("/machine.slice/machine-mybox.scope/payload", "nspawn:mybox",
                 id="nspawn-machined-scope"),
    pytest.param("/machine.slice/systemd-nspawn@my\\x2dbox.service/payload/system.slice",
                 "nspawn:my-box", id="nspawn-service-escaped"),
])
def test_container_from_cgroup(path: str, container: str) -> None:
    assert container_from_cgroup(path) == container


@pytest.mark.parametrize("path", [
    "/", "", "/system.slice/x.service", "/system.slice/docker.service",
    "/machine.slice/libpod-conmon-" + DOCKER_ID + ".scope",  # podman's monitor, not it
    "/kubepods.slice/kubepods-pod12ab.slice/crio-conmon-" + DOCKER_ID + ".scope",
    "/system.slice/docker-notahexid.scope",
])
def test_not_a_container(path: str) -> None:
    assert container_from_cgroup(path) is None


# --- docker_proxy_target ---------------------------------------------------------------

def test_docker_proxy_target() -> None:
    argv = ["/usr/bin/docker-proxy", "-proto", "tcp", "-host-ip", "0.0.0.0",
            "-host-port", "8080", "-container-ip", "172.17.0.2", "-container-port", "80"]
    assert docker_proxy_target(argv) == "172.17.0.2:80/tcp"


def test_docker_proxy_target_udp_equals_form_and_trailing_flag() -> None:
    argv = ["docker-proxy", "-proto=udp", "-host-ip=::", "-host-port=5353",
            "--container-ip=172.17.0.3", "--container-port=53", "-use-listen-fd"]
    assert docker_proxy_target(argv) == "172.17.0.3:53/udp"


@pytest.mark.parametrize("argv", [
    [],
    ["/usr/bin/python3", "-container-ip", "1.2.3.4", "-container-port", "80"],
    ["/usr/bin/docker-proxy", "-proto", "tcp", "-host-port", "8080"],
    ["/usr/bin/docker-proxy", "-container-ip", "172.17.0.2", "-container-port"],
])
def test_not_a_docker_proxy_target(argv: list[str]) -> None:
    assert docker_proxy_target(argv) is None


# --- dbus_error_name -------------------------------------------------------------------

# Names pystemd maps to an exception class of its own (then the name is not kept on the
# object), with the errno libsystemd gives them. The last ones are systemd's, not D-Bus's.
PYSTEMD_MAPPED = [
    ("org.freedesktop.DBus.Error.ServiceUnknown", -errno.EHOSTUNREACH),
    ("org.freedesktop.DBus.Error.NameHasNoOwner", -errno.ENXIO),
    ("org.freedesktop.DBus.Error.NoReply", -errno.ETIMEDOUT),
    ("org.freedesktop.DBus.Error.IOError", -errno.EIO),
    ("org.freedesktop.DBus.Error.NoServer", -errno.ECONNREFUSED),
    ("org.freedesktop.DBus.Error.Timeout", -errno.ETIMEDOUT),
    ("org.freedesktop.DBus.Error.Disconnected", -errno.ECONNRESET),
    ("org.freedesktop.DBus.Error.AccessDenied", -errno.EACCES),
    ("org.freedesktop.DBus.Error.InteractiveAuthorizationRequired", -errno.EACCES),
    ("org.freedesktop.DBus.Error.InvalidArgs", -errno.EINVAL),
    ("org.freedesktop.DBus.Error.UnknownObject", -errno.ENXIO),
    ("org.freedesktop.systemd1.NoSuchUnit", -errno.ENOENT),  # GetUnit on an unloaded unit
]


@pytest.mark.parametrize(("name", "err"), PYSTEMD_MAPPED, ids=[n for n, _ in PYSTEMD_MAPPED])
def test_dbus_error_name_of_pystemd_classes(name: str, err: int) -> None:
    exc = DBusError(err, name.encode(), b"message")
    assert dbus_error_name(exc) == name


@pytest.mark.parametrize("name", [
    "org.freedesktop.systemd1.NoUnitForPID",
    "org.freedesktop.systemd1.NoSuchProcess",
    "org.freedesktop.systemd1.JobTypeNotApplicable",
])
def test_dbus_error_name_kept_on_the_base_class(name: str) -> None:
    # libsystemd gives names it does not know EIO or ESRCH; pystemd keeps them as named.
    exc = DBusError(-errno.ESRCH, name.encode(), b"message")
    assert type(exc).__name__ == "DBusBaseError"
    assert dbus_error_name(exc) == name


def test_dbus_error_name_of_anything_else_is_its_class() -> None:
    assert dbus_error_name(ValueError("x")) == "ValueError"


# --- Systemd over a fake bus: how replies and errors come out -------------------------

class FakeBus:
    """Answers call_method from a table (a value, a function of the call, or an exception
    to raise), as pystemd's DBus does: the reply's `body` is the value."""

    def __init__(self, replies: dict[bytes, Any]) -> None:
        self.replies = replies
        self.calls: list[tuple[bytes, bytes, bytes]] = []
        self.closed = False

    def call_method(self, destination: bytes, path: bytes, interface: bytes,
                    method: bytes, args: Any) -> Any:
        self.calls.append((path, interface, method))
        # what a bus says of a method its systemd lacks (252: GetUnitByPIDFD)
        answer = self.replies.get(method, error_reply("org.freedesktop.DBus.Error.UnknownMethod"))
        if callable(answer):
            answer = answer(path, interface, args)
        if isinstance(answer, BaseException):
            raise answer

        class Reply:
            body = answer

        return Reply()

    def close(self) -> None:
        self.closed = True

    # the rest of units.Bus: job tracking, which these lookups never use
    def match_signal(self, sender: bytes, path: bytes, interface: bytes, member: bytes,
                     callback: Any) -> None:
        raise AssertionError("not used by lookups")

    def process(self) -> Any:
        raise AssertionError("not used by lookups")

    def wait(self, timeout: int) -> None:
        raise AssertionError("not used by lookups")


def error_reply(name: str, err: int = -errno.EIO) -> BaseException:
    exc: BaseException = DBusError(err, name.encode(), b"the message")
    return exc


def test_unit_path_for_a_pid_outside_any_unit_is_none() -> None:
    sd = Systemd(FakeBus({b"GetUnitByPID": error_reply("org.freedesktop.systemd1.NoUnitForPID",
                                                        -errno.ESRCH)}))
    assert sd.unit_path_for_pid(4242) is None
    assert sd.unit_for_pid(4242) is None


def test_a_pid_resolves_by_pidfd_where_systemd_can() -> None:
    """systemd 253+ (Debian 13's 257): GetUnitByPIDFD, handed a pidfd of the process."""
    got: list[Any] = []
    path = b"/org/freedesktop/systemd1/unit/web_2eservice"

    def by_pidfd(_path: bytes, _iface: bytes, args: Any) -> Any:
        got.append(args)
        return [path, b"web.service", b"\x01" * 16]
    bus = FakeBus({b"GetUnitByPIDFD": by_pidfd})
    sd = Systemd(bus)
    assert sd.unit_path_for_pid(os.getpid()) == path
    assert sd.pid_lookup == "pidfd"
    assert [c[2] for c in bus.calls] == [b"GetUnitByPIDFD"] and len(got) == 1


def test_without_getunitbypidfd_the_pid_answers_and_that_is_remembered() -> None:
    """systemd 252 (Debian 12) answers UnknownMethod: GetUnitByPID from then on."""
    path = b"/org/freedesktop/systemd1/unit/web_2eservice"
    bus = FakeBus({b"GetUnitByPID": [path]})
    sd = Systemd(bus)
    assert sd.unit_path_for_pid(os.getpid()) == path
    assert sd.pid_lookup == "pid"
    assert sd.unit_path_for_pid(os.getpid()) == path
    assert [c[2] for c in bus.calls] == [b"GetUnitByPIDFD", b"GetUnitByPID", b"GetUnitByPID"]


def test_a_gone_pid_has_no_unit_without_asking() -> None:
    bus = FakeBus({})
    pid = 2**22 + 7  # above pid_max's default: no such process
    assert Systemd(bus).unit_path_for_pid(pid) is None
    assert bus.calls == []


def test_access_denied_means_not_permitted() -> None:
    sd = Systemd(FakeBus({b"LoadUnit": error_reply("org.freedesktop.DBus.Error.AccessDenied",
                                                    -errno.EACCES)}))
    with pytest.raises(NotPermittedError) as info:
        sd.unit_path("x.service")
    assert info.value.exit_status == ExitStatus.NOT_PERMITTED


@pytest.mark.parametrize("name", ["org.freedesktop.DBus.Error.ServiceUnknown",
                                  "org.freedesktop.DBus.Error.NoReply",
                                  "org.freedesktop.DBus.Error.Disconnected"])
def test_unreachable_systemd_is_systemd_unavailable(name: str) -> None:
    sd = Systemd(FakeBus({b"GetUnitByPID": error_reply(name)}))
    with pytest.raises(SystemdUnavailable):
        sd.unit_path_for_pid(1)


def test_other_errors_keep_their_dbus_name() -> None:
    sd = Systemd(FakeBus({b"GetUnitByPID": error_reply("org.freedesktop.systemd1.Oops")}))
    with pytest.raises(SystemdError) as info:
        sd.unit_path_for_pid(1)
    assert info.value.dbus_name == "org.freedesktop.systemd1.Oops"


def test_describe_reads_unit_and_service_properties() -> None:
    path = b"/org/freedesktop/systemd1/unit/web_40blue_2eservice"
    unit_props = {b"Id": b"web@blue.service", b"ActiveState": b"active",
                  b"SubState": b"running", b"InvocationID": list(range(16))}
    service_props = {
        b"MainPID": 1234,
        b"ControlGroup": b"/system.slice/system-web.slice/web@blue.service",
        b"User": b"www-data",
        b"ExecStart": [(b"/opt/web/bin/webd", [b"/opt/web/bin/webd", b"--port", b"8080"],
                        False, 0, 0, 0, 0, 1234, 0, 0)],
    }

    def get_all(p: bytes, iface: bytes, args: Any) -> Any:
        assert p == path
        [(_, asked)] = args  # apply_signature(b"s", [interface])
        return {units.UNIT_IFACE: unit_props, units.SERVICE_IFACE: service_props}[asked]

    # Reply bodies shaped as pystemd gives them from systemd 252 (checked in the sandbox):
    # one out-argument is the value itself, GetAll a dict, InvocationID a list of ints.
    bus = FakeBus({b"LoadUnit": path, b"GetAll": get_all})
    unit = Systemd(bus).describe("web@blue.service")
    assert unit == Unit(
        id="web@blue.service", active_state="active", sub_state="running", main_pid=1234,
        control_group="/system.slice/system-web.slice/web@blue.service",
        invocation_id=bytes(range(16)).hex(),
        exec_start=(("/opt/web/bin/webd", "--port", "8080"),), user="www-data",
        from_dbus=True)


def test_list_units_returns_the_ids() -> None:
    rows = [(b"web@a.service", b"", b"loaded", b"active", b"running", b"",
             b"/org/freedesktop/systemd1/unit/web_40a_2eservice", 0, b"", b"/"),
            (b"web@b.service", b"", b"loaded", b"failed", b"failed", b"",
             b"/org/freedesktop/systemd1/unit/web_40b_2eservice", 0, b"", b"/")]
    assert Systemd(FakeBus({b"ListUnitsByPatterns": rows})).list_units(["web@*.service"]) \
        == ["web@a.service", "web@b.service"]
