"""classify: every rule that decides self / twin / stray / foreign / lingering, and when a
holder may never be touched, from hand-built facts (no /proc, no D-Bus, no root).

The service under test is the the contract (docs/) example shape: a `web@.service` template whose
instance `web@green.service` is starting, with ExecStart `python3 /opt/web/app.py --port
8080`, running as www-data (uid 33), plus a configured duplicate unit and command globs.
"""

from __future__ import annotations

import pytest
from classify_facts import (
    APP,
    APP_ARGV,
    OTHER_FILE,
    PYTHON_EXE,
    UNIT,
    WWW_DATA,
    context,
    holder,
    proc,
    unit,
)

from portguard.config.schema import loads
from portguard.decide.classify import Conflict, Kind, classify, classify_holder
from portguard.model import Container, FileId, ProgramId, Proto, Unit


def only(conflicts: list[Conflict]) -> Conflict:
    assert len(conflicts) == 1, conflicts
    return conflicts[0]


# -- self: a remnant in the unit's own cgroup ----------------------------------------

def test_remnant_in_the_units_own_cgroup_is_self() -> None:
    h = holder(proc(), unit_id=UNIT)
    c = only(classify(context(), [h]))
    assert c.kind is Kind.SELF
    assert c.reason == "left over from the unit's previous run (in its own cgroup)"
    assert (c.port, c.proto, c.unit, c.holder) == (8080, Proto.TCP, UNIT, h)
    assert c.pids == (4242,)
    assert c.untouchable == ""


def test_a_child_that_inherited_the_socket_is_self_whatever_it_runs() -> None:
    """The unit decides: `sh -c` left over in the cgroup is a remnant, not a foreigner."""
    child = proc(4300, ("/bin/sh", "-c", "sleep 1000"), exe="/usr/bin/dash")
    assert classify_holder(context(), holder(child, unit_id=UNIT)).kind is Kind.SELF


# -- twin: another instance of the template, or a configured duplicate unit ------------

def test_another_instance_of_the_template_is_a_twin() -> None:
    c = classify_holder(context(), holder(proc(), unit_id="web@blue.service"))
    assert c.kind is Kind.TWIN
    assert c.unit == "web@blue.service"
    assert c.reason == "another instance of web@.service"
    assert c.unit == "web@blue.service"


@pytest.mark.parametrize("dup", ["web-legacy.service", "webold-2019.service"])
def test_a_configured_duplicate_unit_is_a_twin(dup: str) -> None:
    c = classify_holder(context(), holder(proc(argv=("/opt/old/webd",)), unit_id=dup))
    assert c.kind is Kind.TWIN
    assert c.reason == "configured as a duplicate of web@.service"
    assert c.unit == dup


def test_a_unit_with_a_similar_name_is_not_a_twin() -> None:
    """`web-admin@x` is not an instance of `web@`, even running the same program."""
    c = classify_holder(context(), holder(proc(), unit_id="web-admin@x.service"))
    assert c.kind is Kind.FOREIGN


def test_a_non_template_service_has_no_instance_twins() -> None:
    api = loads("services:\n  api.service:\n    ports: ['7000']\n").services[0]
    ctx = context(unit="api.service", service=api, unit_info=Unit("api.service"))
    c = classify_holder(ctx, holder(proc(), unit_id="api@blue.service", port=7000))
    assert c.kind is Kind.FOREIGN


# -- stray: the program outside any service unit ---------------------------------------

@pytest.mark.parametrize(("where", "unit_id", "text"), [
    ("no unit", None, "outside any unit"),
    ("login session", "session-3.scope", "in session-3.scope"),
    ("user manager", "user@1000.service", "in user@1000.service"),
])
def test_execstart_copy_outside_any_service_is_a_stray(where: str, unit_id: str | None,
                                                       text: str) -> None:
    c = classify_holder(context(), holder(proc(), unit_id=unit_id))
    assert c.kind is Kind.STRAY, where
    assert c.reason == f"a copy of web@.service's program started {text}"
    assert c.untouchable == ""


@pytest.mark.parametrize("argv", [
    ("python3", "app.py"),  # by hand, from /opt/web: relative names, no arguments
    ("/usr/bin/python3", "/opt/web/app.py", "--port", "8080", "--debug"),
    ("web: master [app]",),  # retitled (setproctitle)
])
def test_the_same_program_whatever_its_title_or_arguments_is_a_stray(
        argv: tuple[str, ...]) -> None:
    """the contract (docs/) case 3: the program is the file it runs (observed as program_id), not
    the command line; arguments no longer decide."""
    assert classify_holder(context(), holder(proc(argv=argv))).kind is Kind.STRAY


@pytest.mark.parametrize(("argv", "exe"), [
    (("webd", "-d"), "/opt/legacy/bin/webd-2.1"),  # the exe glob
    (("/usr/bin/python3", "-m", "gunicorn", "web.wsgi:app"), PYTHON_EXE),  # joined cmdline
])
def test_duplicates_commands_globs_make_a_stray(argv: tuple[str, ...], exe: str) -> None:
    other = ProgramId(FileId(8, 4004))
    c = classify_holder(context(unit_info=None, unit_programs=()),
                        holder(proc(argv=argv, exe=exe, program=other)))
    assert c.kind is Kind.STRAY


@pytest.mark.parametrize(("argv", "program", "identity"), [
    (("/usr/bin/python3", "/opt/other/app.py", "--port", "8080"), "python3.11 app.py",
     APP._replace(target=OTHER_FILE)),
    (("/usr/bin/python3",), "python3.11", APP._replace(target=None)),  # bare interpreter
    (("/usr/bin/python3", "-c", "..."), "python3.11 ...", APP._replace(target=None)),
    (("/usr/bin/python3", "-m", "app"), "python3.11 app",
     APP._replace(target=None, module="app")),
    (APP_ARGV, "python3.11 app.py", None),  # its files could not be read: in doubt
])
def test_a_different_script_under_the_same_interpreter_is_foreign(
        argv: tuple[str, ...], program: str, identity: ProgramId | None) -> None:
    c = classify_holder(context(), holder(proc(argv=argv, program=identity)))
    assert c.kind is Kind.FOREIGN
    assert c.reason == "not web@.service's program"
    # messages name the script, not only the interpreter
    assert c.processes[0].program == program


def test_a_script_service_started_through_its_interpreter_is_a_stray() -> None:
    """ExecStart=/opt/web/webd --port 8080 (a #! script) started by hand as
    `python3 /opt/web/webd --port 8080`: the same program with the same arguments."""
    webd = FileId(8, 5005)
    ctx = context(unit_programs=(ProgramId(webd, target=webd, interpreted=True),))
    copy = proc(argv=("/usr/bin/python3", "/opt/web/webd", "--port", "9090"),
                program=APP._replace(target=webd))
    assert classify_holder(ctx, holder(copy)).kind is Kind.STRAY
    # the interpreter alone (the #! script's file, not run as a script) is not it
    assert classify_holder(ctx, holder(proc(program=ProgramId(webd)))).kind is Kind.FOREIGN
    assert classify_holder(ctx, holder(proc())).kind is Kind.FOREIGN  # another script


def test_without_execstart_or_globs_a_copy_is_not_recognised() -> None:
    """No D-Bus (no ExecStart) and no configured pattern: nothing to match, so foreign."""
    plain = loads("services:\n  web@.service:\n    ports: ['8080']\n").services[0]
    c = classify_holder(context(service=plain, unit_info=None, unit_programs=()),
                        holder(proc()))
    assert c.kind is Kind.FOREIGN


@pytest.mark.parametrize(("unit_uid", "holder_uid", "user"), [
    (WWW_DATA, 1000, "alice"),  # a developer's own copy of the program
    (0, WWW_DATA, "www-data"),  # the unit runs as root, the copy as www-data
    (WWW_DATA, 0, "root"),
])
def test_never_a_stray_by_name_alone_when_it_runs_as_another_user(
        unit_uid: int, holder_uid: int, user: str) -> None:
    c = classify_holder(context(unit_uid=unit_uid),
                        holder(proc(uid=holder_uid, user=user), unit_id="session-7.scope"))
    assert c.kind is Kind.FOREIGN
    assert c.reason == ("runs the service's program but as user "
                        f"{user}, not the unit's user")


def test_one_root_process_of_another_user_makes_the_whole_holder_foreign() -> None:
    """Two unrelated processes share the socket, one of them someone else's: not ours."""
    h = holder(proc(4242), proc(4243, uid=1000, user="alice"))
    assert classify_holder(context(), h).kind is Kind.FOREIGN


def test_a_master_and_workers_are_judged_by_the_master() -> None:
    """nginx started by hand from a root shell: the master runs as root (the unit's user),
    its workers as www-data; the tree is one stray, named by its master, master first."""
    nginx = ProgramId(FileId(8, 6006))
    worker = proc(4243, ("nginx: worker process",), exe="/usr/sbin/nginx", program=nginx,
                  ppid=4242)
    master = proc(4242, ("nginx: master process /usr/sbin/nginx",), exe="/usr/sbin/nginx",
                  uid=0, user="root", program=nginx)
    ctx = context(unit_uid=0, unit_programs=(nginx,))
    c = classify_holder(ctx, holder(worker, master))
    assert c.kind is Kind.STRAY
    assert c.pids == (4242, 4243)
    # a stray master of another user is foreign, whatever its workers run as
    assert classify_holder(context(unit_programs=(nginx,)),
                           holder(worker, master)).kind is Kind.FOREIGN
    # workers whose master is gone (SIGKILLed) are judged by themselves: www-data here
    assert classify_holder(ctx, holder(worker)).kind is Kind.FOREIGN


def test_a_worker_alone_on_the_socket_is_judged_by_the_master_that_forked_it() -> None:
    """haproxy -W started by hand from a root shell: only its worker (user haproxy)
    listens; the master (root, the unit's user) forked it and holds no socket. The tree
    is one stray judged by that master; the worker is what is signalled."""
    haproxy = ProgramId(FileId(8, 7007))
    argv = ("/usr/sbin/haproxy", "-W", "-D", "-f", "/etc/haproxy/haproxy.cfg")
    worker = proc(4243, argv, exe="/usr/sbin/haproxy", uid=112, user="haproxy",
                  program=haproxy, ppid=4242)
    master = proc(4242, argv, exe="/usr/sbin/haproxy", uid=0, user="root", program=haproxy)
    ctx = context(unit_uid=0, unit_programs=(haproxy,))
    c = classify_holder(ctx, holder(worker)._replace(master=master))
    assert c.kind is Kind.STRAY
    assert c.pids == (4243,)
    assert c.reason == ("a copy of web@.service's program started outside any unit "
                        "(forked by its master, pid 4242, user root)")
    # without the master, or with a parent that runs another program (a shell), the
    # worker is judged by itself: another user, foreign
    assert classify_holder(ctx, holder(worker)).kind is Kind.FOREIGN
    shell = proc(4242, ("-bash",), exe="/usr/bin/bash", uid=0, user="root",
                 program=ProgramId(FileId(8, 8008)))
    assert classify_holder(ctx, holder(worker)._replace(master=shell)).kind is Kind.FOREIGN
    # a master of another user than the unit's makes it foreign, as its own holder would
    other = master._replace(uid=1000, user="alice")
    found = classify_holder(ctx, holder(worker)._replace(master=other))
    assert (found.kind, found.reason) == (
        Kind.FOREIGN, "runs the service's program but as user alice, not the unit's user")


def test_the_program_in_another_service_unit_is_foreign_not_a_stray() -> None:
    """A unit says otherwise: the same command line in `staging-web.service` is that
    unit's business, never a stray of ours."""
    c = classify_holder(context(), holder(proc(), unit_id="staging-web.service"))
    assert c.kind is Kind.FOREIGN
    assert c.reason == "not web@.service's program"
    assert c.unit == "staging-web.service"


def test_a_different_program_outside_units_is_foreign_and_named() -> None:
    nginx = proc(900, ("nginx: master process /usr/sbin/nginx",), exe="/usr/sbin/nginx",
                 uid=0, user="root", program=ProgramId(FileId(8, 6006)))
    c = classify_holder(context(), holder(nginx, unit_id="session-2.scope"))
    assert c.kind is Kind.FOREIGN
    assert c.reason == "not web@.service's program"
    assert c.processes[0].program == "nginx" and c.unit == "session-2.scope"
    assert c.pids == (900,)


def test_a_program_without_exe_is_named_by_argv0() -> None:
    """Without root /proc/PID/exe is unreadable: the name comes from argv[0]."""
    c = classify_holder(context(), holder(proc(argv=("/opt/x/bin/memcached", "-p", "8080"),
                                               exe="")))
    assert c.processes[0].program == "memcached"


def test_the_program_inside_a_container_is_foreign_not_a_stray() -> None:
    cid = "3f2a9c1b7d5e"
    inside = proc(uid=WWW_DATA)  # same argv, same uid, host pid namespace
    h = holder(inside, unit_id=f"docker-{cid}.scope", container=Container("docker", cid, "web"))
    c = classify_holder(context(), h)
    assert c.kind is Kind.FOREIGN
    assert "docker container web: a container, never a duplicate" in c.reason
    assert c.untouchable  # never signalled, whatever the policy


def test_a_container_in_the_units_own_cgroup_is_still_foreign() -> None:
    """conmon of a podman container run by the unit itself (quadlet): not a remnant."""
    conmon = proc(argv=("/usr/bin/conmon", "-c", "ab" * 32, "-n", "web"))
    c = classify_holder(context(), holder(conmon, unit_id=UNIT,
                                          container=Container("podman", "ab" * 32, "web",
                                                              via="conmon")))
    assert c.kind is Kind.FOREIGN and c.untouchable
    assert c.reason.startswith("conmon for podman container web: a container")


# -- holders portguard cannot see, and sockets nobody holds ----------------------------

@pytest.mark.parametrize("why", ["holder unknown (needs root)", "holder not found"])
def test_an_unknown_holder_is_foreign_and_never_touched(why: str) -> None:
    c = classify_holder(context(), holder(unknown=why))
    assert c.kind is Kind.FOREIGN
    assert c.reason == (f"{why}: it cannot be told apart from another service, "
                        "so it is never touched")
    assert c.processes == ()  # nothing that could ever be signalled


def test_an_unknown_holder_in_time_wait_state_is_still_unknown() -> None:
    """The reason (not the state) wins: an inode-bearing socket with no visible owner."""
    c = classify_holder(context(), holder(unknown="holder not found", state="CLOSE_WAIT"))
    assert c.kind is Kind.FOREIGN


def test_a_listener_without_any_process_is_foreign() -> None:
    c = classify_holder(context(), holder())
    assert c.kind is Kind.FOREIGN
    assert c.reason == "held by no process portguard can see"


@pytest.mark.parametrize("state", ["TIME_WAIT", "FIN_WAIT2", "LAST_ACK"])
def test_a_closing_socket_with_no_process_is_lingering(state: str) -> None:
    c = classify_holder(context(), holder(state=state))
    assert c.kind is Kind.LINGERING
    assert c.reason == "left by a closed connection; expires on its own"
    assert (c.processes, c.unit, c.untouchable) == ((), None, "")


# -- untouchable: never stopped or signalled, whatever the kind ------------------------

@pytest.mark.parametrize("unit_id", [UNIT, "web@blue.service", None])
def test_pid_1_is_untouchable(unit_id: str | None) -> None:
    c = classify_holder(context(), holder(proc(1), unit_id=unit_id))
    assert c.untouchable == "PID 1 (systemd) holds it"


@pytest.mark.parametrize("pid", [700, 701])
def test_portguard_and_its_ancestors_are_untouchable(pid: int) -> None:
    """e.g. someone ran `python3 /opt/web/app.py & portguard preflight ...` in one shell."""
    c = classify_holder(context(), holder(proc(pid)))
    assert c.kind is Kind.STRAY
    assert c.untouchable == f"pid {pid} is portguard itself or its parent"


def test_a_process_in_another_pid_namespace_is_untouchable() -> None:
    c = classify_holder(context(), holder(proc(ns=4026532999)))
    assert c.untouchable == "pid 4242 runs in another pid namespace (a container)"


def test_any_process_of_the_holder_can_make_it_untouchable() -> None:
    h = holder(proc(4242), proc(4243, ns=4026532999), unit_id=UNIT)
    c = classify_holder(context(), h)
    assert c.kind is Kind.SELF
    assert c.untouchable == "pid 4243 runs in another pid namespace (a container)"


@pytest.mark.parametrize(("unit_id", "kind"), [
    ("web@canary.service", Kind.TWIN),  # named in `protected`
    ("db-main.service", Kind.FOREIGN),  # matched by a protected glob
])
def test_a_protected_unit_is_untouchable(unit_id: str, kind: Kind) -> None:
    c = classify_holder(context(), holder(proc(), unit_id=unit_id))
    assert c.kind is kind
    assert c.untouchable == f"{unit_id} is protected by the config"


def test_the_unit_being_started_can_itself_be_protected() -> None:
    ctx = context(unit="web@canary.service")
    c = classify_holder(ctx, holder(proc(), unit_id="web@canary.service"))
    assert c.kind is Kind.SELF
    assert c.untouchable == "web@canary.service is protected by the config"


# -- twins that claim the port before binding it ---------------------------------------

def test_active_and_activating_twins_claim_the_ports_before_binding() -> None:
    twins = (unit("web@blue.service", "active"), unit("web@red.service", "activating"),
             unit("web@pink.service", "reloading"), unit("web@old.service", "inactive"),
             unit("web@x.service", "failed"), unit(UNIT, "activating"))
    found = classify(context(claiming_twins=twins), [])
    assert [c.unit for c in found] == ["web@blue.service", "web@red.service",
                                       "web@pink.service"]
    for c in found:
        assert (c.kind, c.holder, c.processes, c.untouchable) == (Kind.TWIN, None, (), "")
        assert (c.port, c.proto) == (8080, Proto.TCP)  # the first declared port
    assert found[1].reason == "web@red.service (activating) declares the same port"


def test_a_claiming_twin_is_one_conflict_however_many_ports() -> None:
    nginx = ProgramId(FileId(8, 6006))
    holders = [holder(proc(900, ("nginx",), exe="/usr/sbin/nginx", program=nginx), port=8080),
               holder(proc(901, ("nginx",), exe="/usr/sbin/nginx", program=nginx), port=9090)]
    found = classify(context(claiming_twins=(unit("web@blue.service"),)), holders)
    assert [c.kind for c in found] == [Kind.FOREIGN, Kind.FOREIGN, Kind.TWIN]
    assert (found[2].port, found[2].unit) == (8080, "web@blue.service")


def test_a_twin_already_holding_a_port_is_not_counted_twice() -> None:
    h = holder(proc(), unit_id="web@blue.service", port=9090)
    found = classify(context(claiming_twins=(unit("web@blue.service"),)), [h])
    c = only(found)
    assert c.holder == h
    assert c.port == 9090


def test_a_protected_claiming_twin_is_untouchable() -> None:
    found = classify(context(claiming_twins=(unit("web@canary.service", "activating"),)), [])
    assert only(found).untouchable == "web@canary.service is protected by the config"


def test_free_ports_and_no_twins_mean_no_conflicts() -> None:
    assert classify(context(claiming_twins=(unit("web@old.service", "inactive"),)), []) == []
