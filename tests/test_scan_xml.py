"""Parsing real nmap 7.93 XML (tests/fixtures/nmap/README.md says how each was captured)."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.core.errors import LabctlError
from labctl.scans.result import parse_nmap_xml

FIX = Path(__file__).parent / "fixtures" / "nmap"


def load(name: str):
    return parse_nmap_xml((FIX / name).read_text(), name)


def test_service_versions_scripts_closed_and_filtered():
    info, hosts = load("service-scripts.xml")
    assert info["command_line"].startswith("nmap -sV -sC -n -p 22,23,80,6668,8080")
    assert [h.addr for h in hosts] == ["10.213.0.11"]
    h = hosts[0]
    assert h.state == "up" and h.reason == "arp-response"
    assert h.mac == "F2:B6:18:B9:B6:C8"
    states = {p.key: p.state for p in h.ports}
    assert states == {"22/tcp": "open", "23/tcp": "closed", "80/tcp": "open",
                      "6668/tcp": "open", "8080/tcp": "filtered"}
    ssh = h.port(22)
    assert (ssh.service, ssh.product, ssh.version) == ("ssh", "OpenSSH", "9.2p1 Debian 2+deb12u3")
    assert ssh.version_text == "OpenSSH 9.2p1 Debian 2+deb12u3 (protocol 2.0)"
    http = h.port(80)
    assert http.product == "lighttpd" and http.version == "1.4.59"
    assert http.cpe == "cpe:/a:lighttpd:lighttpd:1.4.59"
    assert http.scripts == {"http-title": "PetFeeder Control",
                            "http-server-header": "lighttpd/1.4.59"}
    assert h.port(6668).service == "tcpwrapped"
    assert h.port(6668).scripts["irc-info"] == "Unable to open connection"
    assert [p.key for p in h.open_ports()] == ["22/tcp", "80/tcp", "6668/tcp"]


def test_hosts_down_are_kept_with_their_state():
    info, hosts = load("hosts-down.xml")
    assert info["uphosts"] == 2 and info["downhosts"] == 3 and info["totalhosts"] == 5
    by = {h.addr: h for h in hosts}
    assert sorted(by) == [f"10.213.0.{i}" for i in range(10, 15)]
    assert [a for a, h in by.items() if h.state == "up"] == ["10.213.0.11", "10.213.0.12"]
    assert by["10.213.0.10"].state == "down" and by["10.213.0.10"].reason == "no-response"
    assert by["10.213.0.11"].mac and by["10.213.0.11"].ports == []


def test_filtered_ports_with_reasons():
    _, hosts = load("filtered.xml")
    by = {h.addr: h for h in hosts}
    a = {p.key: (p.state, p.reason) for p in by["10.213.0.11"].ports}
    assert a["8080/tcp"] == ("filtered", "no-response")
    assert a["22/tcp"] == ("open", "syn-ack")
    assert a["8081/tcp"] == ("closed", "reset")
    b = {p.key: p.state for p in by["10.213.0.12"].ports}
    assert b["502/tcp"] == "open" and b["22/tcp"] == "closed"


def test_ipv6_hosts():
    info, hosts = load("ipv6.xml")
    assert "-6" in info["command_line"].split()
    assert [h.addr for h in hosts] == ["fd00:5c::11", "fd00:5c::12"]
    h = hosts[0]
    assert h.ipv6 == "fd00:5c::11" and h.ipv4 == "" and h.reason == "nd-response"
    assert [p.key for p in h.open_ports()] == ["22/tcp", "80/tcp", "6668/tcp"]
    assert h.port(80).product == "lighttpd"


@pytest.mark.parametrize("text", ["", "not xml", "<nmaprun><host></nmaprun"])
def test_garbage_is_a_clear_error(text):
    with pytest.raises(LabctlError):
        parse_nmap_xml(text, "test")


def test_truncated_xml_from_an_aborted_scan_is_a_clear_error():
    full = (FIX / "filtered.xml").read_text()
    cut = full[: full.index("<runstats>")] + "</nmaprun>\n"
    with pytest.raises(LabctlError, match="incomplete"):
        parse_nmap_xml(cut, "test")


def test_entity_declarations_are_refused():
    """nmap never declares entities; a document that does is refused, not expanded."""
    bomb = ('<?xml version="1.0"?>\n<!DOCTYPE nmaprun [\n <!ENTITY a "aaaaaaaaaa">\n'
            ' <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">\n]>\n'
            '<nmaprun args="&b;"><runstats><finished elapsed="1"/>'
            '<hosts up="0" down="0" total="0"/></runstats></nmaprun>\n')
    with pytest.raises(LabctlError, match="declares entities"):
        parse_nmap_xml(bomb, "test")


def test_vendor_hostnames_and_host_scripts():
    """Elements the fixtures lack (nmap writes them for other scan types)."""
    xml = ('<?xml version="1.0"?>\n<!DOCTYPE nmaprun>\n<nmaprun args="nmap -sC x">'
           '<host><status state="up" reason="arp-response"/>'
           '<address addr="10.213.0.11" addrtype="ipv4"/>'
           '<address addr="10:D5:61:A1:00:11" addrtype="mac" vendor="Tuya Smart"/>'
           '<hostnames><hostname name="feeder.lab" type="PTR"/></hostnames>'
           '<ports><port protocol="udp" portid="53"><state state="open" reason="udp-response"/>'
           '<service name="domain"/></port>'
           '<port protocol="tcp" portid="80"><state state="open" reason="syn-ack"/></port>'
           '</ports><hostscript><script id="nbstat" output="NetBIOS name: FEEDER"/>'
           '</hostscript></host>'
           '<runstats><finished elapsed="2.5"/><hosts up="1" down="0" total="1"/></runstats>'
           '</nmaprun>\n')
    info, hosts = parse_nmap_xml(xml, "test")
    assert info == {"command_line": "nmap -sC x", "elapsed": 2.5, "uphosts": 1,
                    "downhosts": 0, "totalhosts": 1}
    (h,) = hosts
    assert (h.mac, h.vendor, h.hostnames) == ("10:D5:61:A1:00:11", "Tuya Smart", ["feeder.lab"])
    assert [p.key for p in h.ports] == ["80/tcp", "53/udp"]
    assert h.port(53, "udp").service == "domain" and h.port(80).service == ""
    assert h.hostscripts == {"nbstat": "NetBIOS name: FEEDER"}
