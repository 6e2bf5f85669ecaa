"""netavark's published ports: its records (netavark 1.14, Debian 13) and its iptables
rules (netavark 1.4, Debian 12), as those versions really wrote them in the Debian roots
(tests/field/test_podman.py runs both), and `may_publish` knowing them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from portguard.model import Proto
from portguard.observe.containers import hints, netavark
from portguard.observe.containers.records import Published

CID = "a6ccd32729831c3c60fb43903a39bc8448a670f18361619f03d7d4a0075254c6"
NET = "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9"
RECORD = json.dumps({
    "container_id": CID, "network_id": NET,
    "port_mappings": [{"container_port": 8080, "host_ip": "", "host_port": 8080,
                       "protocol": "tcp", "range": 1}],
    "network_name": "podman", "network_hash_name": "1D8721804F16F",
    "container_ip_v4": "10.88.0.2", "subnet_v4": "10.88.0.0/16", "container_ip_v6": None,
    "subnet_v6": None, "dns_port": 53, "dns_server_ips": ["10.88.0.1"]})
# iptables-save -t nat, netavark 1.4 (podman 4.3, Debian 12), one container on 8080
RULES = f"""\
*nat
:NETAVARK-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j NETAVARK-HOSTPORT-DNAT
-A NETAVARK-DN-1D8721804F16F -s 10.88.0.0/16 -p tcp -m tcp --dport 8080 -j NETAVARK-HOSTPORT-SETMARK
-A NETAVARK-DN-1D8721804F16F -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j NETAVARK-HOSTPORT-SETMARK
-A NETAVARK-DN-1D8721804F16F -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.2:8080
-A NETAVARK-HOSTPORT-DNAT -p tcp -m tcp --dport 8080 -m comment --comment \
"dnat name: podman id: {CID}" -j NETAVARK-DN-1D8721804F16F
COMMIT
"""
WEB = Published(CID, "", "podman", "", 8080, "10.88.0.2", 8080, Proto.TCP)


def test_netavark_records_name_the_container_and_its_mappings() -> None:
    assert netavark.parse_ports_record(RECORD) == [WEB]
    doc = json.loads(RECORD)
    doc["port_mappings"] = [{"container_port": 53, "host_ip": "::1", "host_port": 5353,
                             "protocol": "udp", "range": 2}]
    doc["container_ip_v6"] = "fd00::2"
    assert netavark.parse_ports_record(json.dumps(doc)) == [
        Published(CID, "", "podman", "::1", 5353, "fd00::2", 53, Proto.UDP),
        Published(CID, "", "podman", "::1", 5354, "fd00::2", 54, Proto.UDP)]


@pytest.mark.parametrize("damage", [
    {"container_id": "../../etc"}, {"container_id": None},
    {"port_mappings": [{"host_port": "x", "container_port": 1}]},
    {"port_mappings": [{"host_port": 80, "container_port": 80, "protocol": "sctp"}]},
    {"port_mappings": "nonsense"}])
def test_a_damaged_record_publishes_nothing(damage: dict[str, object]) -> None:
    assert netavark.parse_ports_record(json.dumps({**json.loads(RECORD), **damage})) == []
    assert netavark.parse_ports_record("{not json") == []


def test_netavark_14s_nat_rules_name_the_container() -> None:
    assert netavark.parse_nat_rules(RULES) == [WEB]
    # a host address and a port range: -d on the DNAT rule, --dport A:B
    ranged = RULES.replace("--dport 8080", "--dport 8080:8081").replace(
        "-p tcp -m tcp --dport 8080:8081 -j DNAT", "-d 127.0.0.1/32 -p tcp -m tcp "
        "--dport 8080:8081 -j DNAT").replace("10.88.0.2:8080", "10.88.0.2:80-81")
    assert netavark.parse_nat_rules(ranged) == [
        WEB._replace(host_ip="127.0.0.1", container_port=80),
        WEB._replace(host_ip="127.0.0.1", host_port=8081, container_port=81)]


def test_nat_rules_not_netavarks_or_unowned_publish_nothing() -> None:
    assert netavark.parse_nat_rules(RULES.replace("dnat name", "something else")) == []
    assert netavark.parse_nat_rules(RULES.replace(f"id: {CID}", "id: ../x")) == []
    docker = "-A DOCKER ! -i docker0 -p tcp -m tcp --dport 80 -j DNAT --to-destination 1.2.3.4:80"
    assert netavark.parse_nat_rules(docker) == []
    assert netavark.parse_nat_rules('-A NETAVARK-HOSTPORT-DNAT --comment "unclosed') == []


def test_records_first_nat_rules_only_where_netavark_keeps_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ports, ipam = tmp_path / "firewall/ports", tmp_path / "ipam.db"
    monkeypatch.setattr(hints, "NETAVARK_PORTS", str(ports))
    monkeypatch.setattr(hints, "NETAVARK_IPAM", str(ipam))
    ran: list[Sequence[str]] = []

    def run(argv: Sequence[str]) -> str:
        ran.append(argv)
        return RULES if argv[0].endswith("/iptables-save") else ""

    def read(path: str) -> str | None:
        return Path(path).read_text()

    def listdir(path: str) -> list[str]:
        return sorted(p.name for p in Path(path).iterdir())

    saves = [tmp_path / "iptables-save", tmp_path / "ip6tables-save"]
    monkeypatch.setattr(netavark, "SAVE", tuple((str(p), "-t", "nat") for p in saves))
    assert netavark.published(read, listdir, run) == [] and ran == []  # never set up
    ipam.write_bytes(b"")  # netavark 1.4 set a network up: only its rules tell
    assert netavark.published(read, listdir, run) == [] and ran == []  # no iptables
    saves[0].write_bytes(b"")
    assert netavark.published(read, listdir, run) == [WEB]
    saves[1].write_bytes(b"")
    assert netavark.published(read, listdir, run) == [WEB] and len(ran) == 3
    ran.clear()
    ports.mkdir(parents=True)  # netavark >= 1.10: its records, no iptables-save
    assert netavark.published(read, listdir, run) == [] and ran == []
    (ports / f"{NET}_{CID}").write_text(RECORD)
    assert netavark.published(read, listdir, run) == [WEB] and ran == []


def test_may_publish_knows_netavark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CNI_RESULTS", "DOCKER_ROOT", "DOCKER_DAEMON_JSON"):
        monkeypatch.setattr(hints, name, str(tmp_path / "absent" / name))
    ports, ipam = tmp_path / "firewall/ports", tmp_path / "ipam.db"
    monkeypatch.setattr(hints, "NETAVARK_PORTS", str(ports))
    monkeypatch.setattr(hints, "NETAVARK_IPAM", str(ipam))
    assert not hints.may_publish()
    ipam.write_bytes(b"")
    assert hints.may_publish()  # netavark without records: its rules may publish
    ports.mkdir(parents=True)
    assert not hints.may_publish()  # records kept, none there
    (ports / f"{NET}_{CID}").write_text(RECORD)
    assert hints.may_publish()
