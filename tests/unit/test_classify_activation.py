"""classify, socket activation (DESIGN cases 4 and 7): a listener PID 1 holds for a .socket
unit is that unit's; for the service it activates it is no conflict at all; for any other
service it is foreign, untouchable, and the advice names the socket unit (never init.scope).
"""

from __future__ import annotations

from classify_facts import UNIT, WEB, context, proc, sock

from portguard.commands.preflight import advice
from portguard.commands.preflight_execute import describe_conflict
from portguard.decide.classify import Kind, classify, own_activation
from portguard.model import Holder, Unit

SYSTEMD = proc(1, ("/sbin/init",), exe="/usr/lib/systemd/systemd", uid=0, user="root")


def held_by_pid1(socket_unit: str, *triggers: str) -> Holder:
    return Holder(sock(8080, inode=777), (SYSTEMD,),
                  Unit(socket_unit, "active", "listening", triggers=triggers,
                       listen=(("Stream", "0.0.0.0:8080"),)))


def test_the_units_own_activation_socket_is_no_conflict() -> None:
    own = held_by_pid1("web@green.socket", UNIT)
    assert own_activation(context(), own)
    assert classify(context(), [own]) == []


def test_a_template_socket_with_accept_activates_every_instance() -> None:
    per_connection = held_by_pid1("web.socket", "web@.service")
    assert classify(context(), [per_connection]) == []


def test_another_services_socket_is_foreign_untouchable_and_named_by_its_socket_unit() -> None:
    other = held_by_pid1("ssh.socket", "ssh.service")
    [c] = classify(context(), [other])
    assert (c.kind, c.unit, c.pids) == (Kind.FOREIGN, "ssh.socket", (1,))
    assert c.untouchable == "PID 1 (systemd) holds it"
    assert "ssh.socket, which activates ssh.service" in c.reason
    said = describe_conflict(c)
    assert said.startswith("PID 1 (systemd) for ssh.socket [foreign: ")
    tip = advice(WEB, c)
    assert "systemctl stop ssh.socket" in tip and "init.scope" not in tip
    assert "ssh.service holds the port too while it runs" in tip


def test_pid_1_that_dbus_could_not_name_is_never_advised_to_stop_init_scope() -> None:
    bare = Holder(sock(8080, inode=778), (SYSTEMD,), Unit("init.scope", from_dbus=False))
    [c] = classify(context(), [bare])
    assert c.kind is Kind.FOREIGN and c.untouchable
    tip = advice(WEB, c)
    assert "systemctl stop init.scope" not in tip
    assert "systemctl list-sockets" in tip
