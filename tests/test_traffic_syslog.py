"""traffic export --syslog against a real rsyslogd on 127.0.0.1 (UDP, TCP and TLS)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from labctl.cli import run
from tests.helpers.traffic_pcaps import write_pcap
from tests.test_traffic_report import CLOUD, FEEDER, IRC, VACUUM, frames

pytestmark = pytest.mark.skipif(
    not (shutil.which("rsyslogd") or Path("/usr/sbin/rsyslogd").exists()),
    reason="needs rsyslog and rsyslog-gnutls (Debian packages)")


@pytest.fixture
def rsyslog(tmp_path: Path):
    from tests.helpers.traffic_rsyslog import Rsyslog

    folder = tmp_path / "rsyslog"
    folder.mkdir()
    with Rsyslog(folder) as r:
        yield r


def _sd(text: str) -> dict[str, str]:
    """SD-PARAMs of one SD-ELEMENT as rsyslog passes them on (escapes kept)."""
    import re

    assert text.startswith("[labctl@32473 ") and text.endswith("]"), text
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', text))


def _cef(msg: str) -> tuple[list[str], dict[str, str]]:
    import re

    head, _, ext = msg.partition("|Flow|1|")
    parts = head.split("|") + ["Flow", "1"]
    return parts, dict(re.findall(r"(\w+)=((?:[^=\\ ]|\\.)*(?: (?!\w+=)(?:[^=\\ ]|\\.)*)*)",
                                  ext))


@pytest.mark.parametrize("scheme", ["udp", "tcp", "tls"])
def test_rfc5424_field_by_field(rsyslog, tmp_path: Path, scheme: str) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    port = {"udp": rsyslog.udp, "tcp": rsyslog.tcp, "tls": rsyslog.tls}[scheme]
    args = ["traffic", "export", "--pcap", str(pcap), "--syslog",
            f"{scheme}://127.0.0.1:{port}"]
    if scheme == "tls":
        args += ["--ca", str(rsyslog.ca)]
    assert run(args) == 0
    got = rsyslog.received(20)
    assert len(got) == 20  # 18 feeder flows, the vacuum's beacon flow, one DNS answer
    vac = [g for g in got if _sd(g["structured-data"]).get("SrcIp") == VACUUM]
    (v,) = vac
    assert v["pri"] == "134" and v["app-name"] == "labctl" and v["msgid"] == "flow"
    assert v["timereported"] == "2023-11-15T02:05:00.000Z"  # as rsyslog parsed it
    sd = _sd(v["structured-data"])
    assert sd == {"SrcIp": VACUUM, "SrcPort": "50000", "DstIp": CLOUD, "DstPort": "8443",
                  "Protocol": "UDP", "Vlan": "0", "Packets": "24", "Bytes": str(24 * 92),
                  "FirstSeen": "2023-11-15T00:10:00.000Z",
                  "LastSeen": "2023-11-15T02:05:00.000Z", "SrcMac": "00:15:5d:00:00:20"}
    assert v["msg"].strip() == f"flow {VACUUM}:50000 -> {CLOUD}:8443 UDP 24 packets 2208 bytes"
    feeder = [_sd(g["structured-data"]) for g in got
              if _sd(g["structured-data"]).get("SrcIp") == FEEDER]
    assert len(feeder) == 9 and {f["Vlan"] for f in feeder} == {"52"}
    assert {f["DstName"] for f in feeder} == {"irc.example.net"}


def test_cef_over_tcp(rsyslog, tmp_path: Path) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    assert run(["traffic", "export", "--pcap", str(pcap), "--syslog",
                f"tcp://127.0.0.1:{rsyslog.tcp}", "--format", "cef"]) == 0
    got = rsyslog.received(20)
    assert len(got) == 20
    msgs = [g["msg"].strip() for g in got]
    irc = [m for m in msgs if f"src={FEEDER}" in m and f"dst={IRC}" in m]
    assert len(irc) == 9
    head, ext = _cef(irc[0])
    assert head[:3] == ["CEF:0", "labctl", "traffic"] and head[4:] == ["flow", "Flow", "1"]
    assert ext["dpt"] == "6667" and ext["proto"] == "TCP" and ext["cnt"] == "6"
    assert ext["out"] == str(58 + 5 * 158) and ext["cn1"] == "52" and ext["cn1Label"] == "Vlan"
    assert ext["dhost"] == "irc.example.net" and ext["smac"] == "b8:27:eb:00:00:0a"


def test_bad_syslog_url_exits_2_and_contacts_nothing(tmp_path: Path, capsys) -> None:
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    for url in ("http://127.0.0.1:514", "udp://127.0.0.1", "tcp://user:pw@127.0.0.1:514",
                "tls://[::1:514"):
        assert run(["traffic", "export", "--pcap", str(pcap), "--syslog", url]) == 2, url
        assert "--syslog" in capsys.readouterr().err


def test_tls_refuses_a_certificate_the_given_ca_did_not_sign(rsyslog, tmp_path: Path,
                                                            capsys) -> None:
    from tests.helpers.traffic_rsyslog import make_certs

    other = tmp_path / "other"
    other.mkdir()
    other_ca, _, _ = make_certs(other)
    pcap = write_pcap(tmp_path / "lab.pcap", frames())
    rc = run(["traffic", "export", "--pcap", str(pcap), "--syslog",
              f"tls://127.0.0.1:{rsyslog.tls}", "--ca", str(other_ca)])
    assert rc == 5
    assert "--ca" in capsys.readouterr().err
    assert rsyslog.received(1, timeout=1.0) == []
